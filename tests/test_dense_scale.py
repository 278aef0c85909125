"""Dense (dresd) stores at scale: packed key extraction, the index chosen by size with its recall,
torch search (the GPU machine has no faiss), memory-mapped loading."""

from __future__ import annotations

import contextlib
import json
import random

import faiss
import numpy as np
import pytest
import torch

from specbench_cli.datastores import build_from_token_docs as build_store
from specbench_cli.datastores import dense_search
from specbench_cli.datastores.dresd import DresdDatastore
from specbench_cli.datastores.key_extraction import hidden_batches, pack_rows
from specbench_cli.drafters.dresd import DReSD
from specbench_cli.types import DraftContext, MethodSetup, SpecbenchError


def _docs(vocab: int, n: int, low: int, high: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(low, high))] for _ in range(n)]


def _alone(tiny, doc, layer: int) -> torch.Tensor:
    with torch.inference_mode():
        out = tiny.model(input_ids=torch.tensor([doc]), output_hidden_states=True)
    return out.hidden_states[layer][0, :-1]


@pytest.fixture(scope="module")
def ivf_store(tiny, tmp_path_factory):
    """An IVF store forced on a small corpus (flat_max below its size), probing few lists so recall < 1."""
    docs = _docs(tiny.vocab_size, 24, 60, 160, seed=11)
    path = build_store(
        "dresd", docs, tmp_path_factory.mktemp("ivf") / "s", loaded=tiny, dim=8, flat_max=100, nprobe=3
    )
    return path, docs


def test_packed_extraction_gives_the_keys_of_one_document_at_a_time(tiny):
    docs = [np.array(d) for d in _docs(tiny.vocab_size, 17, 2, 40, seed=2)]
    rows = pack_rows([len(d) for d in docs], 40, seed=0)
    assert len(rows) < len(docs) and sorted(d for r in rows for d in r) == list(range(len(docs)))
    assert all(sum(len(docs[d]) for d in r) <= 40 for r in rows)
    for layer in (-1, 1):
        seen = set()
        for ids, states in hidden_batches(tiny, docs, layer, rows_per_batch=2, seed=0):
            for d, h in zip(ids, states, strict=True):
                seen.add(d)
                torch.testing.assert_close(h, _alone(tiny, docs[d].tolist(), layer), atol=1e-5, rtol=1e-5)
        assert seen == set(range(len(docs)))


def test_auto_index_is_flat_below_flat_max(tiny, tmp_path):
    docs = _docs(tiny.vocab_size, 3, 20, 30, seed=1)
    m = json.loads(
        (build_store("dresd", docs, tmp_path / "f", loaded=tiny, dim=8) / "manifest.json").read_text()
    )
    assert m["index"] == "Flat" and m["recall"]["queries"] == 0
    assert not (tmp_path / "f" / "recall_queries.npy").exists()


def _recall_at_10(path, search) -> float:
    """Tie-aware recall@10 of `search(queries, 10) -> scores` against numpy brute force, from the files."""
    queries = np.load(path / "recall_queries.npy")
    keys = np.load(path / "keys.npy").astype(np.float32)
    exact = np.sort(queries @ keys.T, axis=1)[:, ::-1][:, :10]
    return round(float((search(queries) >= exact[:, 9:10] - 1e-6).mean()), 4)


def test_ivf_build_records_a_recall_that_recomputes(ivf_store):
    path, docs = ivf_store
    m = json.loads((path / "manifest.json").read_text())
    n_keys = sum(len(d) - 1 for d in docs)
    assert m["index"] == f"IVF{int(5 * n_keys**0.5)},Flat" and m["nprobe"] == 3
    assert m["recall"]["queries"] == n_keys // 100 == len(np.load(path / "recall_queries.npy"))
    index = faiss.read_index(str(path / "index.faiss"))
    faiss.extract_index_ivf(index).nprobe = 3
    recomputed = _recall_at_10(path, lambda q: index.search(q, 10)[0])
    assert m["recall"]["at_10"] == recomputed
    assert 0 < recomputed < 1  # 3 of ~270 lists: an approximate search, measured as such


def test_torch_search_returns_the_faiss_neighbours(ivf_store, tiny):
    path, docs = ivf_store
    by_faiss = DresdDatastore(path, tiny, k=10)
    by_torch = DresdDatastore(path, tiny, backend="torch", k=10)
    assert (by_faiss.backend, by_torch.backend) == ("faiss-cpu", "torch")
    assert by_torch.search_params["nprobe"] == 3
    with torch.inference_mode():
        hidden = tiny.model(torch.tensor([docs[0]]), output_hidden_states=True).hidden_states[-1][0]
    for pos in range(0, 60, 7):
        s1, i1 = by_faiss.search(hidden[pos])
        s2, i2 = by_torch.search(hidden[pos])
        assert i1.tolist() == i2.tolist() and len(i1) == 10
        np.testing.assert_allclose(s1, s2, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch"])
def test_memory_mapped_store_gives_the_same_drafts(ivf_store, tiny, backend):
    path, docs = ivf_store

    def drafter(load):
        opts = {"backend": backend, "load": load, "draft_len": 6}
        return DReSD(MethodSetup(target=tiny, datastores={"dresd": path}, options=opts))

    in_ram, mapped = drafter("ram"), drafter("mmap")
    assert mapped.store.search_params["mmap"] is True and in_ram.store.search_params["mmap"] is False
    doc = docs[3]
    with torch.inference_mode():
        hidden = tiny.model(torch.tensor([doc]), output_hidden_states=True).hidden_states[-1][0]
    trees = 0
    for pos in range(0, len(doc) - 2, 5):
        ctx = DraftContext(tokens=doc[: pos + 2], max_nodes=64, hidden=hidden[pos])
        tree = in_ram.propose(ctx)
        assert mapped.propose(ctx) == tree
        trees += len(tree) > 0
    assert trees > 0


def test_store_builds_and_searches_without_faiss(tiny, tmp_path, monkeypatch):
    """The GPU machine has no faiss: the IVF is trained in torch and searched in torch."""
    monkeypatch.setattr(dense_search, "faiss_module", lambda: None)
    docs = _docs(tiny.vocab_size, 10, 60, 120, seed=4)
    path = build_store("dresd", docs, tmp_path / "t", loaded=tiny, dim=8, flat_max=100, nprobe=4)
    m = json.loads((path / "manifest.json").read_text())
    assert not (path / "index.faiss").exists() and m["quality_backend"] == "torch-cpu"
    store = DresdDatastore(path, tiny, k=10)
    assert store.backend == "torch" and store.search_params["nprobe"] == 4

    def search(q):
        return store.index.index.search(torch.from_numpy(q), 10)[0].numpy()

    assert m["recall"]["at_10"] == _recall_at_10(path, search) and m["recall"]["at_10"] > 0
    with pytest.raises(SpecbenchError, match="needs faiss"):
        build_store("dresd", docs, tmp_path / "h", loaded=tiny, dim=8, index="HNSW32")
    with pytest.raises(SpecbenchError, match="faiss-cpu"):
        DresdDatastore(path, tiny, backend="faiss-cpu")


def test_torch_ivf_search_ranks_the_probed_lists_and_pads_a_short_one(tmp_path):
    from specbench_cli.datastores import torch_index

    rng = np.random.default_rng(0)
    keys = rng.normal(size=(20, 4)).astype(np.float32)
    owner = np.arange(20) % 4  # 4 lists of 5 keys
    centroids = np.stack([keys[owner == j].mean(0) for j in range(4)]).astype(np.float32)
    order = np.argsort(owner, kind="stable")
    np.save(tmp_path / torch_index.CENTROIDS_FILE, centroids)
    np.save(tmp_path / torch_index.IDS_FILE, order.astype(np.int64))
    np.save(tmp_path / torch_index.OFFSETS_FILE, np.array([0, 5, 10, 15, 20], dtype=np.int64))
    index = torch_index.TorchIndex(keys, "cpu", folder=tmp_path, nprobe=1)
    queries = rng.normal(size=(2, 4)).astype(np.float32)
    scores, ids = index.search(torch.from_numpy(queries), 8)
    assert scores.shape == ids.shape == (2, 8)
    for q, s, i in zip(queries, scores, ids):
        probed = int(np.argmax(centroids @ q))
        members = np.flatnonzero(owner == probed)
        expected = members[np.argsort(-(keys[members] @ q))]
        assert i[:5].tolist() == expected.tolist() and i[5:].tolist() == [-1, -1, -1]
        np.testing.assert_allclose(s[:5].numpy(), np.sort(keys[members] @ q)[::-1], rtol=1e-6)
        assert torch.isinf(s[5:]).all()
    one_s, one_i = index.search(torch.from_numpy(queries[:1]), 8)  # one query: the step's case
    assert one_i.shape == (1, 8) and one_i[0].tolist() == ids[0].tolist()


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_ivf_search_in_fixed_shapes_equals_scoring_the_probed_lists(tmp_path, mmap):
    """Lists of unequal length (one empty): the search scores a fixed number of slots (the nprobe
    longest lists' total), so a probe set with fewer candidates leaves slots masked; the result must
    still be exactly the probed lists' members ranked by score."""
    from specbench_cli.datastores import torch_index

    rng = np.random.default_rng(3)
    sizes = [9, 1, 0, 4, 6]
    keys = rng.normal(size=(sum(sizes), 6)).astype(np.float32)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(keys))  # key rows are not stored list by list
    keys, owner = keys[perm], owner[perm]
    centroids = rng.normal(size=(len(sizes), 6)).astype(np.float32)
    np.save(tmp_path / torch_index.CENTROIDS_FILE, centroids)
    np.save(tmp_path / torch_index.IDS_FILE, np.argsort(owner, kind="stable").astype(np.int64))
    np.save(tmp_path / torch_index.OFFSETS_FILE, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    np.save(tmp_path / "keys.npy", keys)
    stored = np.load(tmp_path / "keys.npy", mmap_mode="r") if mmap else keys
    index = torch_index.TorchIndex(stored, "cpu", folder=tmp_path, nprobe=2, mmap=mmap)
    assert index.params["candidates"] == 9 + 6
    # The graph's slots: the largest probe set of the key rows sampled (here, with few keys, every row).
    key_probes = np.argsort(-(keys @ centroids.T), axis=1)[:, :2]
    assert index.params["graph_candidates"] == max(sum(sizes[c] for c in row) for row in key_probes)
    index.graph_budget = 9 + 4  # fewer slots than the worst case, so some queries overflow them
    overflowed = 0
    for q in rng.normal(size=(24, 6)).astype(np.float32):
        probed = np.argsort(-(centroids @ q))[:2]
        members = np.flatnonzero(np.isin(owner, probed))
        expected = members[np.argsort(-(keys[members] @ q))][:7]
        # The eager search, and the fixed-shape form a GPU captures (every slot scored, unused masked),
        # whose result counts only when the probe set's candidates fit its slots.
        eager = index.search(torch.from_numpy(q[None]), 7)
        *fixed, total = index._probe(torch.from_numpy(q), 7, fixed=True)
        assert int(total) == len(members)
        overflowed += int(total) > index.graph_budget
        forms = [(eager[0][0], eager[1][0])] + ([fixed] if int(total) <= index.graph_budget else [])
        for scores, ids in forms:
            got = ids[ids >= 0].tolist()
            assert got == expected.tolist()
            assert (ids[len(got) :] == -1).all() and torch.isinf(scores[len(got) :]).all()
            np.testing.assert_allclose(scores[: len(got)].numpy(), keys[expected] @ q, rtol=1e-5)
    assert index.search_mode() == "eager" and 0 < overflowed < 24


@pytest.mark.parametrize("graph_faster", [True, False])
def test_torch_ivf_keeps_the_graph_only_where_it_timed_faster(tmp_path, monkeypatch, graph_faster):
    """On CUDA the first search of each k times the captured graph against the eager search and keeps
    the faster (on an H200 the graph lost: it scores the worst case's slots). A stand-in graph here: its
    replay writes the eager result, slowly or at once; either way every search returns the same ids."""
    import time

    from specbench_cli.datastores import torch_index

    rng = np.random.default_rng(5)
    sizes = [30, 2, 5, 12]
    keys = rng.normal(size=(sum(sizes), 6)).astype(np.float32)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    np.save(tmp_path / torch_index.CENTROIDS_FILE, rng.normal(size=(len(sizes), 6)).astype(np.float32))
    np.save(tmp_path / torch_index.IDS_FILE, np.argsort(owner, kind="stable").astype(np.int64))
    np.save(tmp_path / torch_index.OFFSETS_FILE, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    index = torch_index.TorchIndex(keys, "cpu", folder=tmp_path, nprobe=2)
    index.use_graphs = True  # as on CUDA; capture and synchronisation are stood in for below
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    real_probe = index._probe
    replays = []

    class Captured:
        def __init__(self, query, packed):
            self.query, self.packed = query, packed

        def replay(self):
            replays.append(1)
            if not graph_faster:
                time.sleep(0.005)
            self.packed.copy_(index._packed(real_probe(self.query, 7, fixed=True)))

    def capture(row, k, prepare=None):
        query, packed = row.clone(), torch.empty(2 * k + 1, dtype=torch.float64)
        return query, Captured(query, packed), packed

    if graph_faster:  # the eager form pays a stand-in for its launches and host sync
        monkeypatch.setattr(index, "_probe", lambda *a, **kw: (time.sleep(0.005), real_probe(*a, **kw))[1])
    monkeypatch.setattr(index, "_capture", capture)
    queries = torch.from_numpy(rng.normal(size=(6, 6)).astype(np.float32))
    captured_before = torch_index.captures_made()
    for q in queries:
        got = index.search_one(q, 7)[1]
        probed = torch.topk(index.centroids @ q, 2).indices.numpy()
        members = np.flatnonzero(np.isin(owner, probed))
        assert got.tolist() == members[np.argsort(-(keys[members] @ q.numpy()))][:7].tolist()
    assert torch_index.captures_made() == captured_before + 1  # one per k: what eval flags on the clock
    graph_ms, eager_ms = index.timed[7, False]  # k=7, no projection inside
    assert (graph_ms < eager_ms) == graph_faster
    mode = index.search_mode()
    assert mode.startswith("cuda graph (" if graph_faster else "eager (") and "k=7: graph" in mode
    calibration = torch_index.CALIBRATION_SEARCHES + 1  # the graph's warm-up and timed replays
    assert len(replays) == calibration + (len(queries) if graph_faster else 0)


def test_torch_exact_search_of_one_query_replays_a_graph(monkeypatch):
    """On CUDA a decode step's exact search (one query) replays a captured graph, as IVF's does; a
    batch still scores in one product per chunk. A stand-in graph here (its replay runs the captured
    form): the ids must be the exact top-k, and the graph is captured once per k."""
    from specbench_cli.datastores import torch_index

    rng = np.random.default_rng(9)
    keys = rng.normal(size=(300, 8)).astype(np.float32)
    index = torch_index.TorchIndex(keys, "cpu", chunk=128)  # a batch: three chunks, the last one short
    index.use_graphs = True  # as on CUDA; capture and synchronisation are stood in for below
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    replays = []

    class Captured:
        def __init__(self, query, packed, k):
            self.query, self.packed, self.k = query, packed, k

        def replay(self):
            replays.append(1)
            self.packed.copy_(index._packed(index._one_query(self.query, self.k, fixed=True)))

    def capture(row, k, prepare=None):
        query, packed = row.clone(), torch.empty(2 * k + 1, dtype=torch.float64)
        return query, Captured(query, packed, k), packed

    monkeypatch.setattr(index, "_capture", capture)
    monkeypatch.setattr(index, "_faster", lambda graph, row, k, prepare=None: graph)  # keep the graph
    captured_before = torch_index.captures_made()
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    for q in queries:
        got = index.search_one(torch.from_numpy(q), 7)[1]
        assert got.tolist() == np.argsort(-(keys @ q), kind="stable")[:7].tolist()
    assert torch_index.captures_made() == captured_before + 1 and len(replays) == len(queries)
    batch = index.search(torch.from_numpy(queries), 7)[1]  # a batch: no replay
    assert len(replays) == len(queries) and batch.shape == (5, 7)
    assert batch[:, 0].tolist() == [int(np.argmax(keys @ q)) for q in queries]


@pytest.mark.parametrize("ivf", [False, True])
def test_a_step_search_projects_inside_the_graph_and_reads_back_once(tmp_path, monkeypatch, ivf):
    """`search_one`: a raw query, the store's projection run inside the search (inside the CUDA graph
    on a GPU), and one read of the packed scores and ids. Here on the CPU, eagerly and through the real
    capture path with CUDA's calls stood in by running the captured function: both must give what
    projecting first and searching gives."""
    from specbench_cli.datastores import torch_index

    rng = np.random.default_rng(11)
    keys = rng.normal(size=(200, 4)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    folder = None
    if ivf:
        folder = tmp_path
        owner = np.arange(200) % 5
        centroids = np.stack([keys[owner == j].mean(0) for j in range(5)]).astype(np.float32)
        np.save(tmp_path / torch_index.CENTROIDS_FILE, centroids)
        np.save(tmp_path / torch_index.IDS_FILE, np.argsort(owner, kind="stable").astype(np.int64))
        np.save(tmp_path / torch_index.OFFSETS_FILE, np.arange(0, 201, 40).astype(np.int64))
    project = torch.from_numpy(rng.normal(size=(9, 4)).astype(np.float32))

    def prepare(raw):  # (1, 9) -> (1, 4) unit rows, as the dense store's projection
        return torch.nn.functional.normalize(raw.float() @ project, dim=-1)

    index = torch_index.TorchIndex(keys, "cpu", folder=folder, nprobe=2)
    # bf16 hidden states, as a GPU run's; the projection reads them as float32
    raws = torch.from_numpy(rng.normal(size=(6, 9)).astype(np.float32)).to(torch.bfloat16)
    expected = [index.search(prepare(raw[None]), 7) for raw in raws]
    for raw, (s, i) in zip(raws, expected):  # eager: no graphs on the CPU
        got_s, got_i = index.search_one(raw, 7, prepare)
        assert got_i.dtype == np.int64 and got_i.tolist() == i[0].tolist()
        np.testing.assert_allclose(got_s, s[0].numpy(), rtol=1e-6)

    class Replayable:  # torch.cuda.graph stood in: "replay" reruns what was captured
        def __init__(self):
            self.fn = None

        def replay(self):
            self.fn()

    captured_fns = []

    def fake_graph(graph, **kwargs):
        class Capture:
            def __enter__(self):
                return graph

            def __exit__(self, *exc):
                return False

        captured_fns.append(graph)
        return Capture()

    stream = type("Stream", (), {"wait_stream": lambda self, other: None})
    monkeypatch.setattr(torch.cuda, "Stream", stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Replayable)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(index, "_faster", lambda graph, row, k, prepare=None: graph)
    index.use_graphs = True
    real_capture = index._capture

    def capture(row, k, prepare=None):  # the real capture; its graph's replay reruns the search
        query, graph, packed = real_capture(row, k, prepare)

        def rerun():
            packed.copy_(index._packed(index._one_query(index._prepared(query, prepare), k, fixed=True)))

        graph.fn = rerun
        return query, graph, packed

    monkeypatch.setattr(index, "_capture", capture)
    for raw, (s, i) in zip(raws, expected):
        got_s, got_i = index.search_one(raw, 7, prepare)
        assert got_i.tolist() == i[0].tolist()
        np.testing.assert_allclose(got_s, s[0].numpy(), rtol=1e-6)
    assert list(index.graphs) == [(7, True)] and len(captured_fns) == 1  # one graph, projection inside
