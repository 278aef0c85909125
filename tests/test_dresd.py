"""DReSD: the dense datastore (scaling + PCA + L2, FAISS, values, manifest) and the `dresd` drafter."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from specbench_cli.datastores import build_from_token_docs as build_store
from specbench_cli.datastores.dresd import PAD, VALUE_LEN, DresdDatastore, next_token_values
from specbench_cli.datastores.faiss_index import exact_search, make_index, ordered, set_search_params
from specbench_cli.datastores.pca import MomentAccumulator, fit_transform
from specbench_cli.drafters.dresd import DReSD, candidate_paths
from specbench_cli.types import DraftContext, LoadedModel, MethodSetup, SpecbenchError


def _dresd_store(tmp, loaded, docs):
    """The lossless test's builder (tests/test_lossless.py TEST_DATASTORES)."""
    return build_store("dresd", docs, tmp / "dresd", loaded=loaded)


def _docs(vocab: int, n: int = 6, length: int = 40, seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(length + 3 * i)] for i in range(n)]


@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory):
    """A store whose PCA is fitted on the first 100 keys only, so both the sample and the streamed
    projection paths write keys."""
    docs = _docs(tiny.vocab_size)
    path = build_store(
        "dresd", docs, tmp_path_factory.mktemp("dresd") / "store", loaded=tiny, dim=16, pca_sample=100
    )
    return path, docs


def _hidden_states(loaded: LoadedModel, doc: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([doc]), output_hidden_states=True)
    return out.hidden_states[-1][0]


# ----------------------------------------------------------------------------------------------------
# Scaling + PCA


def test_pca_round_trip_and_unit_norms():
    rng = np.random.default_rng(0)
    rank, hidden, dim = 6, 24, 8
    # Data of rank 6 with very different per-dimension scales and offsets: z-scored, it lies in a
    # 6-dimensional subspace, which an 8-dim PCA must keep exactly.
    x = rng.normal(size=(500, rank)) @ rng.normal(size=(rank, hidden))
    x = x * rng.uniform(0.1, 50, size=hidden) + rng.normal(scale=100, size=hidden)
    t = fit_transform(x.astype(np.float32), dim)
    assert t.components.shape == (dim, hidden)
    np.testing.assert_allclose(t.components @ t.components.T, np.eye(dim), atol=1e-4)
    z = (x - t.mean) / t.std
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    projected = z @ t.components.T
    np.testing.assert_allclose(projected @ t.components, z, atol=2e-3)  # nothing lost
    assert t.explained_variance == pytest.approx(1.0, abs=1e-5)
    keys = t.apply(x)
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(keys, projected / np.linalg.norm(projected, axis=1, keepdims=True), atol=1e-4)
    # The torch path used at query time gives the same keys.
    np.testing.assert_allclose(
        t.to_torch("cpu")(torch.from_numpy(x.astype(np.float32))).numpy(), keys, atol=1e-4
    )


def test_streamed_moments_equal_one_shot_fit_and_sign_is_fixed():
    x = np.random.default_rng(1).normal(size=(300, 10)).astype(np.float32) * 3 + 1
    acc = MomentAccumulator(10, "cpu")
    for part in np.array_split(x, 7):
        acc.add(torch.from_numpy(part))
    streamed, once = acc.fit(4), fit_transform(x, 4)
    np.testing.assert_allclose(streamed.components, once.components, atol=1e-5)
    pivots = np.abs(once.components).argmax(1)
    assert (once.components[np.arange(4), pivots] > 0).all()


def test_constant_dimension_does_not_blow_up():
    x = np.random.default_rng(2).normal(size=(200, 5)).astype(np.float32)
    x[:, 2] = 7.0
    t = fit_transform(x, 3)
    assert t.std[2] == 1.0 and np.isfinite(t.apply(x)).all()


# ----------------------------------------------------------------------------------------------------
# Index and values


def test_exact_index_returns_the_true_nearest_neighbours():
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(2000, 16)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    index = make_index("Flat", keys.astype(np.float16))
    _, ids = index.search(queries, 10)
    truth = np.argsort(-(queries @ keys.astype(np.float16).astype(np.float32).T), axis=1)[:, :10]
    assert (ids == truth).all()
    assert (
        exact_search(keys, queries, 10, chunk=300) == np.argsort(-(queries @ keys.T), axis=1)[:, :10]
    ).all()
    # An IVF index that probes every list is exhaustive, hence exact too.
    ivf = make_index("IVF8,Flat", keys.astype(np.float16))
    assert set_search_params(ivf, 8, 10)["nprobe"] == 8
    assert (ivf.search(queries, 10)[1] == ids).all()


def test_ordered_breaks_ties_by_id_and_drops_fillers():
    s, i = ordered(np.array([0.5, 0.9, 0.5, 0.1, -3.0]), np.array([9, 4, 2, 7, -1]))
    assert i.tolist() == [4, 2, 9, 7] and s.tolist() == [0.9, 0.5, 0.5, 0.1]


def test_values_hold_the_next_tokens_and_stop_at_the_document_end():
    doc = np.arange(100, 130)
    v = next_token_values(doc)
    assert v.shape == (29, VALUE_LEN)
    assert v[0].tolist() == list(range(101, 121))
    assert v[-1].tolist() == [129] + [PAD] * (VALUE_LEN - 1)
    assert v[15].tolist() == list(range(116, 130)) + [PAD] * 6


# ----------------------------------------------------------------------------------------------------
# The built store


def test_manifest_fields(store, tiny):
    path, docs = store
    m = json.loads((path / "manifest.json").read_text())
    assert m["method"] == "dresd" and m["format_version"] >= 1
    assert m["vectors"] == sum(len(d) - 1 for d in docs)  # exact index: nothing held out
    assert m["documents"] == len(docs) and m["tokens"] == sum(len(d) for d in docs)
    assert (m["dim"], m["layer"], m["index"], m["value_len"]) == (16, -1, "Flat", VALUE_LEN)
    assert m["model"]["hidden_size"] == tiny.model.config.hidden_size
    assert m["pca_fitted_on"] == 100
    assert m["recall"]["at_10"] == 1.0 and m["self_retrieval"] == 1.0
    assert 0 < m["explained_variance"] <= 1
    assert m["tokenizer"]["fingerprint"] and m["build"]["seconds"] > 0
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp folder left


def test_store_keys_match_fresh_hidden_states(store, tiny):
    """Keys written from the PCA sample and from the streamed projection both find their own position."""
    path, docs = store
    ds = DresdDatastore(path, tiny, k=5)
    keys = np.load(path / "keys.npy")
    assert keys.dtype == np.float16 and keys.shape == (ds.manifest["vectors"], 16)
    np.testing.assert_allclose(np.linalg.norm(keys.astype(np.float32), axis=1), 1.0, atol=2e-3)
    for doc in docs:
        hidden = _hidden_states(tiny, doc)
        for pos in (0, len(doc) // 2, len(doc) - 2):
            scores, ids = ds.search(hidden[pos])
            assert scores[0] > 0.999
            assert ds.values[ids[0]].tolist() == next_token_values(np.array(doc))[pos].tolist()


def test_a_sample_kept_on_the_device_gives_the_same_store(store, tiny, tmp_path, monkeypatch):
    # On a GPU the raw PCA sample stays in device memory (in the model's dtype) instead of a float32
    # file: the keys, values and transform must be the ones the on-disk path writes.
    from specbench_cli.datastores import dresd

    path, docs = store
    monkeypatch.setattr(dresd, "sample_on_device", lambda device, nbytes: True)
    again = build_store("dresd", docs, tmp_path / "again", loaded=tiny, dim=16, pca_sample=100)
    for name in ("keys.npy", "values.npy"):
        assert np.array_equal(np.load(path / name), np.load(again / name))
    assert (path / "transform.safetensors").read_bytes() == (again / "transform.safetensors").read_bytes()
    assert not (again / "sample.npy").exists()


def test_ivf_index_measures_recall_on_held_out_keys(tiny, tmp_path):
    docs = _docs(tiny.vocab_size, n=8, length=60, seed=5)
    path = build_store("dresd", docs, tmp_path / "ivf", loaded=tiny, dim=8, index="IVF4,Flat", nprobe=4)
    m = json.loads((path / "manifest.json").read_text())
    n_keys = sum(len(d) - 1 for d in docs)
    held = m["recall"]["queries"]
    assert held == n_keys // 100 and m["vectors"] == n_keys - held
    assert m["recall"]["at_10"] == 1.0  # every list probed: the IVF search is exhaustive
    assert m["nprobe"] == 4 and len(np.load(path / "values.npy", mmap_mode="r")) == m["vectors"]


def test_bad_factory_string_is_a_user_error(tiny, tmp_path):
    with pytest.raises(SpecbenchError, match="factory"):
        build_store(
            "dresd", _docs(tiny.vocab_size, n=2), tmp_path / "x", loaded=tiny, dim=8, index="NotAnIndex"
        )
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_other_model_or_tokenizer_is_refused(store, tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path, _ = store
    cfg = LlamaConfig(
        vocab_size=tiny.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    other = LoadedModel(
        LlamaForCausalLM(cfg).eval(), tiny.tokenizer, "other-32", "code", None, "float32", "cpu"
    )
    with pytest.raises(SpecbenchError, match="hidden states of size 64"):
        DReSD(MethodSetup(target=other, datastores={"dresd": path}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for f in path.iterdir():
        (foreign / f.name).write_bytes(f.read_bytes())
    m = json.loads((foreign / "manifest.json").read_text())
    m["tokenizer"]["fingerprint"] = "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SpecbenchError, match="tokenizer"):
        DReSD(MethodSetup(target=tiny, datastores={"dresd": foreign}))
    m["tokenizer"]["fingerprint"], m["method"] = (
        json.loads((path / "manifest.json").read_text())["tokenizer"]["fingerprint"],
        "rest",
    )
    (foreign / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SpecbenchError, match="not 'dresd'"):
        DReSD(MethodSetup(target=tiny, datastores={"dresd": foreign}))


def test_non_final_layer_is_refused_by_the_drafter(tiny, tmp_path):
    path = build_store("dresd", _docs(tiny.vocab_size, n=2), tmp_path / "l1", loaded=tiny, dim=8, layer=1)
    assert json.loads((path / "manifest.json").read_text())["layer"] == 1
    with pytest.raises(SpecbenchError, match="layer 1"):
        DReSD(MethodSetup(target=tiny, datastores={"dresd": path}))


# ----------------------------------------------------------------------------------------------------
# The drafter


def test_first_token_filter():
    rows = np.array(
        [
            [5, 1, 2, 3, 4],
            [6, 9, 9, 9, 9],  # wrong first token: dropped
            [5, 1, 2, PAD, PAD],  # cut at the document end
            [5, PAD, PAD, PAD, PAD],  # nothing after the root: dropped
            [5, 1, 2, 3, 4],  # duplicate
            [5, 7, 8, 9, 10],
        ],
        dtype=np.int32,
    )
    assert candidate_paths(rows, 5, num_drafts=10, draft_len=3) == [[1, 2, 3], [1, 2], [1, 2, 3], [7, 8, 9]]
    assert candidate_paths(rows, 5, num_drafts=2, draft_len=10) == [[1, 2, 3, 4], [1, 2]]
    assert candidate_paths(rows, 5, num_drafts=10, draft_len=4, distinct=True) == [
        [1, 2, 3, 4],
        [1, 2],
        [7, 8, 9, 10],
    ]
    assert candidate_paths(rows, 42) == []


def first_token_filter_by_rows(rows, root, num_drafts, draft_len, distinct):
    """DReSD's filter written row by row, as the paper states it: the reference for the fast one."""
    out = []
    for row in rows.tolist():
        if row[0] != root:
            continue
        path = []
        for tok in row[1 : 1 + draft_len]:
            if tok < 0:
                break
            path.append(tok)
        if path and not (distinct and path in out):
            out.append(path)
        if len(out) == num_drafts:
            break
    return out


@pytest.mark.parametrize("distinct", [False, True])
def test_first_token_filter_matches_the_row_by_row_filter(distinct):
    rng = np.random.default_rng(7)
    for _ in range(300):
        rows = rng.integers(0, 4, size=(50, 12)).astype(np.int32)  # few tokens: many repeats and roots
        for r in rng.choice(50, size=10):
            rows[r, rng.integers(1, 12) :] = PAD
        num_drafts, draft_len = int(rng.integers(1, 12)), int(rng.integers(1, 14))
        want = first_token_filter_by_rows(rows, 1, num_drafts, draft_len, distinct)
        assert candidate_paths(rows, 1, num_drafts, draft_len, distinct) == want


def test_drafter_proposes_the_stored_continuation_as_one_tree(store, tiny):
    path, docs = store
    drafter = DReSD(MethodSetup(target=tiny, datastores={"dresd": path}, options={"draft_len": 6}))
    doc = docs[2]
    hidden = _hidden_states(tiny, doc)
    pos = 10  # the root is doc[pos + 1], produced by the hidden state at pos
    ctx = DraftContext(tokens=doc[: pos + 2], max_nodes=64, hidden=hidden[pos])
    tree = drafter.propose(ctx)
    assert doc[pos + 2 : pos + 8] in tree.paths()
    assert len(tree) <= 6 * 10 and len(set(zip(tree.parents, tree.tokens, strict=True))) == len(
        tree
    )  # shared prefixes once
    assert drafter.propose(
        DraftContext(tokens=doc[: pos + 2], max_nodes=3, hidden=hidden[pos])
    ).tokens == tuple(doc[pos + 2 : pos + 5])
    assert drafter.propose(DraftContext(tokens=doc[: pos + 2], max_nodes=64, hidden=None)).tokens == ()
    stats = drafter.stats()  # two searches (the hidden=None call searches nothing)
    assert stats["retrieval_seconds"] > 0 and stats["candidates"] >= 2 and stats["batch_tokens"] >= 3
    assert drafter.describe()["backend"] == "faiss-cpu"
    # Same query, same tree: ties are broken by id.
    assert drafter.propose(ctx) == tree


def test_torch_backend_matches_faiss(store, tiny):
    """The exact torch search (the GPU path when faiss-gpu is missing) returns what FAISS returns."""
    path, docs = store
    by_faiss, by_torch = DresdDatastore(path, tiny, k=20), DresdDatastore(path, tiny, backend="torch", k=20)
    assert (by_faiss.backend, by_torch.backend) == ("faiss-cpu", "torch")
    hidden = _hidden_states(tiny, docs[1])
    for pos in (0, 7, 30):
        s1, i1 = by_faiss.search(hidden[pos])
        s2, i2 = by_torch.search(hidden[pos])
        assert i1.tolist() == i2.tolist()
        np.testing.assert_allclose(s1, s2, atol=1e-5)
    with pytest.raises(SpecbenchError, match="backend"):
        DresdDatastore(path, tiny, backend="scann")


def test_build_index_from_a_generated_corpus_keys_prompt_plus_answer(tiny, tmp_path):
    """`build-index --method dresd --corpus generate:FILE`: documents are the chat prompt + the answer."""
    from specbench_cli.datastores import build_index
    from specbench_cli.prompts import build_prompt_ids

    fixture = "tests/fixtures/code_alpaca_small.json"
    options = {
        "text_key": ["instruction"],
        "max_docs": 4,
        "max_new_tokens": 8,
        "opt": {"dim": 8},
        "batch_size": 3,
    }
    m = build_index("dresd", "tiny-random", f"generate:{fixture}", tmp_path / "g", options, None)
    answers = [json.loads(line) for line in open(m["corpus"]["answers_file"])]
    assert m["documents"] == len(answers) == 4 and m["corpus"]["documents_formed_from"].startswith(
        "chat prompt"
    )
    prompt = build_prompt_ids(tiny.tokenizer, [answers[0]["prompt"]], [])
    answer = tiny.tokenizer(answers[0]["answer"], add_special_tokens=False)["input_ids"]
    values = np.load(tmp_path / "g" / "values.npy")
    # The first prompt + answer is stored whole: its next-token windows are consecutive value rows.
    want = next_token_values(np.array(prompt + answer))
    starts = np.flatnonzero((values == want[0]).all(1))
    assert any((values[o : o + len(want)] == want).all() for o in starts)
    assert m["tokens"] >= len(prompt) * 4
    with pytest.raises(SpecbenchError, match="already exists"):
        build_index("dresd", "tiny-random", f"generate:{fixture}", tmp_path / "g", options, None)


def test_eval_records_how_the_dense_search_ran_after_its_warm_up(store, tmp_path):
    """Which form the search took (faiss, or torch's graph or eager search, chosen by timing both on a
    GPU) is known only once it has run: the run's config records it after the warm-up."""
    from typer.testing import CliRunner

    from specbench_cli.cli import app

    path, _ = store
    out = tmp_path / "run"
    questions = "tests/fixtures/questions_small.jsonl"
    args = [
        "eval",
        "--model",
        "tiny-random",
        "--suite",
        f"jsonl:{questions}",
        "--methods",
        "ar,dresd,dresd@torch",
    ]
    args += ["--datastore", str(path), "--method-opt", "dresd@torch.backend=torch", "--limit", "1"]
    args += ["--max-new-tokens", "6", "--warmup", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    params = json.loads((out / "config.json").read_text())["methods_params"]
    assert params["dresd"]["search_mode"] == "faiss-cpu"
    assert params["dresd@torch"]["search_mode"] == "eager"  # no CUDA: torch searches eagerly
