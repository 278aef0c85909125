"""Damaged or foreign datastores get a clean one-line refusal, never a crash inside a search kernel;
`build-index` refuses output folders it must not touch and cleans what killed builds left.

Two layers are tested apart: the checksums (a store file changed after the build: truncated, a byte
flipped, rows shuffled) and the array checks behind them (a store whose manifest was re-sealed over
bad arrays: out-of-range values, a float dtype, an empty array), which stand between a file and the
numba kernels.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from test_cli import QUESTIONS, assert_one_line_error, eval_args, run

from specbench_cli import files
from specbench_cli.datastores import build_from_token_docs
from specbench_cli.datastores.base import VERIFIED_FILE, file_records
from specbench_cli.datastores.dresd import DresdDatastore
from specbench_cli.datastores.manifest import check_datastore, read_manifest, write_manifest
from specbench_cli.datastores.rest import RestDatastore
from specbench_cli.datastores.sam import SamDatastore
from specbench_cli.models import tokenizer_fingerprint
from specbench_cli.types import LoadedModel, SpecbenchError

OPENERS = {"rest": RestDatastore, "sam": SamDatastore}


def _docs(vocab: int, n: int = 6, length: int = 40, seed: int = 7) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(length + 3 * i)] for i in range(n)]


def _store(kind: str, tmp_path: Path, tiny) -> Path:
    return build_from_token_docs(kind, _docs(tiny.vocab_size), tmp_path / kind, loaded=tiny)


def _reseal(folder: Path) -> None:
    """Record the current files in the manifest, as if the build had written them (the checksums then
    pass and only the array checks stand between the files and the kernels)."""
    manifest = read_manifest(folder)
    write_manifest(folder, manifest | {"files": file_records(folder)})


def _one_line_refusal(opener, *needles: str) -> None:
    with pytest.raises(SpecbenchError) as info:
        opener()
    message = str(info.value)
    assert "\n" not in message and "rebuild" in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# ----------------------------------------------------------------------------------------------------
# Checksums: a store file changed after the build


@pytest.mark.parametrize("kind", ["rest", "sam"])
def test_truncated_file_is_refused(kind, tmp_path, tiny):
    path = _store(kind, tmp_path, tiny)
    tokens = path / "tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:-8])
    _one_line_refusal(lambda: OPENERS[kind](path), "tokens.npy", "bytes")


@pytest.mark.parametrize("kind", ["rest", "sam"])
def test_flipped_byte_is_refused_even_after_an_earlier_verified_open(kind, tmp_path, tiny):
    path = _store(kind, tmp_path, tiny)
    OPENERS[kind](path)  # verified and cached
    assert (path / VERIFIED_FILE).is_file()
    target = path / ("sa.npy" if kind == "rest" else "edges.npy")
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x40
    target.write_bytes(bytes(data))  # same size, new mtime: hashed again
    _one_line_refusal(lambda: OPENERS[kind](path), target.name, "sha256")


def test_shuffled_array_is_refused(tmp_path, tiny):
    path = _store("rest", tmp_path, tiny)
    sa = np.load(path / "sa.npy")
    np.save(path / "sa.npy", np.random.default_rng(0).permutation(sa))  # same values, same size
    _one_line_refusal(lambda: RestDatastore(path), "sa.npy", "sha256")


def test_missing_file_is_refused(tmp_path, tiny):
    path = _store("sam", tmp_path, tiny)
    (path / "link.npy").unlink()
    _one_line_refusal(lambda: SamDatastore(path), "link.npy", "missing")


def test_sam_store_of_the_older_layout_is_refused(tmp_path, tiny):
    path = _store("sam", tmp_path, tiny)
    manifest = read_manifest(path)
    write_manifest(path, manifest | {"layout": {"dtype": "int32"}})  # no "automaton": the [S, 3] layout
    _one_line_refusal(lambda: SamDatastore(path), "older automaton layout")


def test_hash_is_checked_once_then_cached(tmp_path, tiny, monkeypatch):
    path = _store("rest", tmp_path, tiny)
    hashed = []
    real = files.sha256_file

    def counting(p, *args, **kwargs):
        hashed.append(Path(p).name)
        return real(p, *args, **kwargs)

    monkeypatch.setattr("specbench_cli.datastores.base.sha256_file", counting)
    fingerprint = read_manifest(path)["tokenizer"]["fingerprint"]
    check_datastore(path, "rest", fingerprint, "mt-bench", None, False)  # what eval does first
    RestDatastore(path)  # then the drafter opens it
    assert sorted(hashed) == ["sa.npy", "tokens.npy"]
    RestDatastore(path)
    assert len(hashed) == 2  # sizes checked, hashes not recomputed
    np.save(path / "tokens.npy", np.load(path / "tokens.npy"))  # rewritten: same bytes, new mtime
    RestDatastore(path)
    assert sorted(hashed[2:]) == ["tokens.npy"]


def test_store_without_checksums_is_refused_with_a_rebuild_hint(tmp_path, tiny):
    path = _store("rest", tmp_path, tiny)
    manifest = read_manifest(path)
    write_manifest(path, manifest | {"files": {"tokens": "tokens.npy", "suffix_array": "sa.npy"}})
    _one_line_refusal(lambda: RestDatastore(path), "no checksums", "--force")
    write_manifest(path, manifest | {"format_version": 1})
    with pytest.raises(SpecbenchError, match="format version 1.*rebuild"):
        RestDatastore(path)


def test_eval_refuses_a_damaged_store_before_writing(tmp_path, tiny):
    path = _store("rest", tmp_path, tiny)
    (path / "sa.npy").write_bytes((path / "sa.npy").read_bytes()[:-4])
    out = tmp_path / "run"
    result = run(*eval_args(out, "--methods", "ar,rest", "--datastore", str(path), "--limit", "1"))
    assert_one_line_error(result, "sa.npy", "rebuild")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# Array checks: bad arrays under a consistent manifest


def _point_past_the_stream(sa: np.ndarray) -> None:
    sa[len(sa) // 2] = len(sa) + 1000  # the search kernel would read past the token stream


def _edge_to_nowhere(edges: np.ndarray) -> None:
    edges[0, 1] = 10**9  # a transition to a state that does not exist


@pytest.mark.parametrize(
    ("kind", "name", "corrupt"),
    [("rest", "sa.npy", _point_past_the_stream), ("sam", "edges.npy", _edge_to_nowhere)],
)
def test_out_of_range_index_is_refused(kind, name, corrupt, tmp_path, tiny):
    path = _store(kind, tmp_path, tiny)
    arr = np.load(path / name)
    corrupt(arr)
    np.save(path / name, arr)
    _reseal(path)
    _one_line_refusal(lambda: OPENERS[kind](path), name, "outside")


def test_sam_suffix_link_cycle_is_refused(tmp_path, tiny):
    path = _store("sam", tmp_path, tiny)
    link = np.load(path / "link.npy")
    link[5] = 5  # a link to itself: falling back along links would never end
    np.save(path / "link.npy", link)
    _reseal(path)
    _one_line_refusal(lambda: SamDatastore(path), "suffix link")


@pytest.mark.parametrize(("kind", "name"), [("rest", "sa.npy"), ("rest", "tokens.npy"), ("sam", "edges.npy")])
def test_float_array_is_refused(kind, name, tmp_path, tiny):
    path = _store(kind, tmp_path, tiny)
    np.save(path / name, np.load(path / name).astype(np.float32))
    _reseal(path)
    _one_line_refusal(lambda: OPENERS[kind](path), name, "float32")


@pytest.mark.parametrize(("kind", "name"), [("rest", "sa.npy"), ("sam", "link.npy")])
def test_empty_array_is_refused(kind, name, tmp_path, tiny):
    path = _store(kind, tmp_path, tiny)
    arr = np.load(path / name)
    np.save(path / name, arr[:0])
    _reseal(path)
    _one_line_refusal(lambda: OPENERS[kind](path), name)


def test_dresd_values_out_of_range_are_refused(tmp_path, tiny):
    path = build_from_token_docs("dresd", _docs(tiny.vocab_size, n=3), tmp_path / "d", loaded=tiny, dim=8)
    values = np.load(path / "values.npy")
    values[0, 0] = -7
    np.save(path / "values.npy", values)
    _reseal(path)
    _one_line_refusal(lambda: DresdDatastore(path, tiny), "values.npy", "outside")


# ----------------------------------------------------------------------------------------------------
# A dense store from another model


def test_dresd_store_from_another_model_of_the_same_shape_is_refused(tmp_path, tiny):
    import torch

    path = build_from_token_docs("dresd", _docs(tiny.vocab_size, n=3), tmp_path / "d", loaded=tiny, dim=8)
    DresdDatastore(path, tiny)  # its own model: accepted
    twin = type(tiny.model)(tiny.model.config).eval()  # same shape and tokenizer, other weights
    torch.nn.init.normal_(twin.get_output_embeddings().weight)
    other = LoadedModel(twin, tiny.tokenizer, "twin", "code", None, "float32", "cpu")
    assert twin.config.hidden_size == tiny.model.config.hidden_size
    _one_line_refusal(lambda: DresdDatastore(path, other), "weights")
    assert read_manifest(path)["model"]["weights_fingerprint"]


# ----------------------------------------------------------------------------------------------------
# build-index: output folders


def _build_args(out: Path, *extra: str) -> list[str]:
    return ["build-index", "--method", "rest", "--model", "tiny-random", "--corpus", str(QUESTIONS),
            "--text-key", "turns", "--out", str(out), *extra]  # fmt: skip


def test_build_index_cleans_a_killed_builds_leftover(tmp_path):
    out = tmp_path / "store"
    leftover = tmp_path / ".store.building"
    leftover.mkdir()
    (leftover / "tokens.npy").write_bytes(b"half written")
    result = run(*_build_args(out))
    assert result.exit_code == 0, result.output
    assert not leftover.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    RestDatastore(out)
    result = run(*_build_args(out, "--force"))  # replacing a datastore leaves nothing else behind
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_force_onto_a_folder_that_is_not_a_datastore_is_refused(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert_one_line_error(run(*_build_args(precious, "--force")), "not a datastore")
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_out_dot_and_out_under_a_file_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    assert_one_line_error(run(*_build_args(Path("."), "--force")), "current folder")
    assert_one_line_error(run(*_build_args(Path(".."), "--force")), "current folder")
    assert_one_line_error(run(*_build_args(Path("keep.txt") / "store")), "keep.txt", "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    ("method", "opt", "needle"),
    [
        ("rest", "dim=8", "unknown rest datastore option"),
        ("sam", "layer=2", "unknown sam datastore option"),
        ("dresd", "dim=abc", "dim='abc'"),
        ("dresd", "dim=0", "at least 1"),
        ("dresd", "nodim", "KEY=VALUE"),
    ],
)
def test_build_index_options_are_typed_per_kind(method, opt, needle, tmp_path):
    out = tmp_path / "store"
    args = _build_args(out, "--opt", opt)
    args[args.index("rest")] = method
    assert_one_line_error(run(*args), needle)
    assert not out.exists()


def test_dresd_options_reach_the_store(tmp_path, tiny):
    out = tmp_path / "d"
    args = _build_args(out, "--opt", "dim=8", "--opt", "index=Flat", "--max-docs", "3")
    args[args.index("rest")] = "dresd"
    result = run(*args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dim"] == 8 and manifest["index"] == "Flat"
    assert manifest["build"]["params"]["dim"] == 8
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tiny.tokenizer)
    assert set(manifest["files"]) == {"keys.npy", "values.npy", "transform.safetensors", "index.faiss"}


@pytest.mark.parametrize(
    "name, corrupt, needle",
    [
        ("ivf_ids.npy", lambda a: np.concatenate([a[:1], a[:-1]]), "every key exactly once"),
        ("ivf_ids.npy", lambda a: a + 10**6, "every key exactly once"),
        ("ivf_offsets.npy", lambda a: a[::-1].copy(), "does not split"),
    ],
)
def test_dresd_ivf_lists_that_would_miss_or_overrun_keys_are_refused(name, corrupt, needle, tmp_path, tiny):
    """The IVF lists torch searches are checked like any array: a bad one is refused on open."""
    docs = _docs(tiny.vocab_size, n=8, length=60)
    path = build_from_token_docs("dresd", docs, tmp_path / "d", loaded=tiny, dim=8, flat_max=10)
    DresdDatastore(path, tiny, backend="torch")  # sound as built
    np.save(path / name, corrupt(np.load(path / name)))
    _reseal(path)
    _one_line_refusal(lambda: DresdDatastore(path, tiny, backend="torch"), name, needle)
