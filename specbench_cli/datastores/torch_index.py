"""Inner-product search over a dense store in torch, on CUDA or the CPU: exact, or IVF over stored lists.

This is the dense store's search where faiss (or faiss-gpu) is not installed, e.g. on the GPU machine,
and its IVF build there. The IVF layout is three arrays any backend can read:

    ivf_centroids.npy   float32 (nlist, dim)   unit centroids (spherical k-means: inner product)
    ivf_ids.npy         int64 (N,)             key rows grouped by list, list by list
    ivf_offsets.npy     int64 (nlist + 1,)     list l holds ivf_ids[offsets[l] : offsets[l + 1]]

A build with faiss writes them from its trained IVF index (so torch searches the same lists faiss
does); a build without faiss trains them here. Search scores every key of the `nprobe` lists whose
centroids score highest, exactly, like faiss's IVF,Flat: same lists, same candidates, same top k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CENTROIDS_FILE = "ivf_centroids.npy"
IDS_FILE = "ivf_ids.npy"
OFFSETS_FILE = "ivf_offsets.npy"
KMEANS_ITERATIONS = 10
CHUNK = 1 << 18  # keys scored at once (bounds the (queries x keys) score block)
SCORE_BLOCK = 1 << 27  # scores of (keys x centroids) computed at once while assigning
CALIBRATION_SEARCHES = 20  # per form, graph and eager, on a CUDA index's first search for each k
SAMPLED_QUERIES = 512  # key rows whose probe sets size the graph's candidate slots
_captures = 0  # search graphs captured (with their timing) in this process: `eval` flags one on the clock


def captures_made() -> int:
    return _captures


def normalise(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def assign(x: Any, centroids: Any) -> Any:
    """Index of the highest-scoring centroid of every row of x, rows a chunk at a time (the score block
    stays ~512 MB however many lists there are)."""
    import torch

    chunk = max(1024, SCORE_BLOCK // len(centroids))
    return torch.cat([(x[s : s + chunk] @ centroids.T).argmax(1) for s in range(0, len(x), chunk)])


def kmeans(x: Any, nlist: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> Any:
    """Spherical k-means on unit rows x (n, d): nlist unit centroids; an emptied list takes a random row."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=gen)[:nlist].to(x.device)].clone()
    for _ in range(iterations):
        owner = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, owner, x)
        counts = torch.bincount(owner, minlength=nlist)
        empty = counts == 0
        if bool(empty.any()):
            refill = torch.randint(len(x), (int(empty.sum()),), generator=gen).to(x.device)
            sums[empty] = x[refill]
        centroids = normalise(sums)
    return centroids


def write_ivf(folder: Path, centroids: np.ndarray, owner: np.ndarray) -> int:
    """Group key rows by list (`owner[i]` = list of row i) and write the three IVF files; returns nlist."""
    nlist = len(centroids)
    ids = np.argsort(owner, kind="stable").astype(np.int64)
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(owner, minlength=nlist))
    np.save(folder / CENTROIDS_FILE, np.ascontiguousarray(centroids, dtype=np.float32))
    np.save(folder / IDS_FILE, ids)
    np.save(folder / OFFSETS_FILE, offsets)
    return nlist


def train_ivf(keys: np.ndarray, nlist: int, n_train: int, seed: int, device: Any, folder: Path) -> None:
    """Train the lists on a seeded sample of the keys (on `device`), assign every key, write the files."""
    import torch

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(keys), min(n_train, len(keys)), replace=False))
    sample = normalise(torch.from_numpy(np.asarray(keys[rows], dtype=np.float32)).to(device))
    centroids = kmeans(sample, nlist, seed)
    owner = np.concatenate(
        [
            assign(torch.from_numpy(np.asarray(keys[s : s + CHUNK], dtype=np.float32)).to(device), centroids)
            .cpu()
            .numpy()
            for s in range(0, len(keys), CHUNK)
        ]
    )
    write_ivf(folder, centroids.cpu().numpy(), owner)


def ivf_problem(folder: Path, n: int, dim: int) -> str | None:
    """Why the IVF files in `folder` cannot index n keys of dim `dim` (a search would read out of bounds
    or miss keys), or None when they are sound or absent."""
    if not (folder / CENTROIDS_FILE).is_file():
        return None
    centroids = np.load(folder / CENTROIDS_FILE, mmap_mode="r")
    ids = np.load(folder / IDS_FILE, mmap_mode="r")
    offsets = np.load(folder / OFFSETS_FILE)
    if centroids.ndim != 2 or centroids.shape[1] != dim or centroids.dtype != np.float32:
        return f"{CENTROIDS_FILE} is not float32 (nlist, {dim})"
    if (
        offsets.shape != (len(centroids) + 1,)
        or offsets[0] != 0
        or offsets[-1] != n
        or (np.diff(offsets) < 0).any()
    ):
        return f"{OFFSETS_FILE} does not split {n:,} keys into {len(centroids):,} lists"
    if ids.shape != (n,) or ids.dtype != np.int64:
        return f"{IDS_FILE} is not int64 ({n:,},)"
    seen = np.zeros(n, dtype=bool)
    seen[np.asarray(ids[(ids >= 0) & (ids < n)])] = True
    if not seen.all() or ((ids < 0) | (ids >= n)).any():
        return f"{IDS_FILE} does not list every key exactly once"
    return None


def ivf_from_faiss(index: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(centroids, owner list of every key row) of a faiss IVF index, or None when it is not IVF."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    centroids = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)
    owner = np.empty(ivf.ntotal, dtype=np.int64)
    lists = ivf.invlists
    for lst in range(ivf.nlist):
        n = lists.list_size(lst)
        if n:
            owner[faiss.rev_swig_ptr(lists.get_ids(lst), n)] = lst
    return centroids, owner


class TorchIndex:
    """Exact or IVF top-k by inner product over `keys` (a numpy array or memmap), on `device`.

    In memory (`mmap=False`) the keys are copied to the device once as float32. Memory-mapped (CPU only)
    they stay in the page cache and are read a chunk (exact) or a candidate set (IVF) at a time.
    """

    def __init__(
        self,
        keys: np.ndarray,
        device: Any,
        folder: Path | None = None,
        nprobe: int = 1,
        mmap: bool = False,
        chunk: int = CHUNK,
    ):
        import torch

        self.device = torch.device(device)
        self.mmap = mmap and self.device.type == "cpu"
        self.keys = (
            keys if self.mmap else torch.from_numpy(np.asarray(keys, dtype=np.float32)).to(self.device)
        )
        self.n, self.chunk = len(keys), chunk
        self.ivf = folder is not None and (Path(folder) / CENTROIDS_FILE).is_file()
        # (k, with a projection inside) -> captured one-query search (CUDA); False: searched eagerly
        self.graphs: dict[tuple[int, bool], Any] = {}
        self.graph_error: str | None = None
        # the same keys -> (graph, eager) ms of the first searches, which chose between the two
        self.timed: dict[tuple[int, bool], tuple[float, float]] = {}
        self.use_graphs = self.device.type == "cuda"
        self.graph_budget = self.n  # an exact search scores every key, in the graph too
        self._every_key = torch.tensor(self.n, device=self.device)
        if self.ivf:
            self.centroids = torch.from_numpy(np.load(folder / CENTROIDS_FILE)).to(self.device)
            self.ids = torch.from_numpy(np.load(folder / IDS_FILE)).to(self.device)  # 8 bytes a key: read
            offsets = np.load(folder / OFFSETS_FILE)
            lengths = np.diff(offsets)
            self.starts = torch.from_numpy(offsets[:-1].copy()).to(self.device)
            self.lengths = torch.from_numpy(lengths.copy()).to(self.device)
            self.nprobe = int(min(max(nprobe, 1), len(self.centroids)))
            # No probe set holds more candidates than the nprobe longest lists: the eager search's slots.
            self.budget = max(int(np.sort(lengths)[::-1][: self.nprobe].sum()), 1)
            self.slots = torch.arange(self.budget, device=self.device)
            # The fixed-shape (graph) form scores fewer: as many as the largest probe set of sampled key
            # rows (queries come from the keys' distribution). On unbalanced lists that is a fraction of
            # the worst case; a query with more candidates (about 1 in SAMPLED_QUERIES + 1) is searched
            # again eagerly, so both forms score the same candidates (exact score ties aside, which the
            # two top-k's may order differently: drafts, never verified tokens, could differ).
            self.graph_budget = self._sampled_budget()

    @property
    def params(self) -> dict:
        if not self.ivf:
            return {"exact": True}
        # Whether a search runs from a CUDA graph is known only after its first capture: `search_mode`.
        return {
            "nprobe": self.nprobe,
            "nlist": len(self.centroids),
            "candidates": self.budget,
            "graph_candidates": self.graph_budget,
        }

    def candidate_counts(self, queries: Any) -> Any:
        """How many keys each query's probe set holds (its nprobe lists' total); queries (B, dim)."""
        import torch

        lists = torch.topk(queries.float().to(self.device) @ self.centroids.T, self.nprobe, dim=1).indices
        return self.lengths[lists].sum(1)

    def _sampled_budget(self) -> int:
        import torch

        if self.n <= SAMPLED_QUERIES:
            picks = torch.arange(self.n)
        else:
            picks = torch.randint(self.n, (SAMPLED_QUERIES,), generator=torch.Generator().manual_seed(0))
        sample = self.rows(picks if self.mmap else picks.to(self.device))
        return max(min(int(self.candidate_counts(sample).max()), self.budget), 1)

    def search_mode(self) -> str:
        """How one-query searches have run so far: from CUDA graphs, or eagerly (on the CPU, after a
        failed capture, or because the eager form timed faster on this index), with the timings that
        decided."""
        if not (self.use_graphs and not self.mmap):
            return "eager"
        if self.graph_error:
            return f"eager (graph capture failed: {self.graph_error})"
        if not self.graphs:
            return "cuda graph (none captured yet)"
        timed = "; ".join(
            f"k={k}{' projected' if projected else ''}: graph {g:.3f} ms, eager {e:.3f} ms"
            for (k, projected), (g, e) in sorted(self.timed.items())
        )
        kinds = {"cuda graph" if graph else "eager" for graph in self.graphs.values()}
        mode = kinds.pop() if len(kinds) == 1 else "cuda graph for some k, eager for others"
        return f"{mode} (first searches timed, {timed})" if timed else mode

    def rows(self, ids: Any) -> Any:
        import torch

        if self.mmap:
            picked = np.asarray(self.keys[np.sort(ids.numpy())], dtype=np.float32)
            order = torch.argsort(torch.argsort(ids))  # rows were read in sorted order (sequential IO)
            return torch.from_numpy(picked)[order]
        return self.keys[ids]

    def search(self, queries: Any, k: int) -> tuple[Any, Any]:
        """(scores, ids), each (B, k) on the device, best first; queries (B, dim) float. Fewer than k
        candidates: the tail is padded with -inf / -1, as an exhausted faiss search is. Eager (a
        build's recall check, batches); a decode step's one query goes through `search_one`."""
        import torch

        q = queries.float().to(self.device)
        k = min(k, self.n)
        if not self.ivf:
            return self._exact(q, k)  # one product per chunk of keys
        with torch.inference_mode():
            found = [self._probe(row, k)[:2] for row in q]
        return torch.stack([s for s, _ in found]), torch.stack([i for _, i in found])

    def search_one(self, query: Any, k: int, prepare: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """A decode step's search: one query (a vector, any float dtype, on any device), its scores and
        ids read back to the host in ONE copy, as numpy arrays of k (padded with -inf / -1 as `search`).

        `prepare` maps raw queries (1, H) to search vectors (1, dim): the store's projection. On CUDA
        it runs inside the captured search graph, so a step costs a copy into the graph's input, a
        replay and a read, where the projection, the search's clones and two reads were ~17 torch calls
        on the host (dresd's retrieval took 0.8 ms a step on an H200 host,
        bench/results/2026-12-03-h200-every-method/method_stats.md)."""
        import torch

        k = min(k, self.n)
        query = query.reshape(-1).to(self.device)
        host = None  # scores | ids | candidates, float64: one read
        with torch.inference_mode():
            graph = self._graph(query, k, prepare) if self.use_graphs and not self.mmap else False
            if graph is not False:
                self._replay_graph(graph, query)
                host = graph[2].cpu().numpy()
                if self.ivf and host[2 * k] > self.graph_budget:  # more candidates than the graph scored
                    host = None
            if host is None:
                host = self._packed(self._one_query(self._prepared(query, prepare), k)).cpu().numpy()
        return host[:k].astype(np.float32), host[k : 2 * k].astype(np.int64)

    @staticmethod
    def _prepared(query: Any, prepare: Any) -> Any:
        return prepare(query[None])[0] if prepare is not None else query.float()

    @staticmethod
    def _packed(found: tuple[Any, Any, Any]) -> Any:
        """(scores, ids, candidates) as one float64 vector [scores | ids | candidates], read in one copy
        (ids up to 2^53 are exact in float64)."""
        import torch

        scores, ids, count = found
        return torch.cat([scores.double(), ids.double(), count.double().reshape(1)])

    def _one_query(self, row: Any, k: int, fixed: bool = False) -> tuple[Any, Any, Any]:
        """One query's search in the form a graph captures: (scores, ids, candidates scored). A decode
        step searches one query, and at that size the launches are the search's time: an exact search
        over 308k keys took 1.18 ms a step eagerly on an H200 host (2026-12-03, ninth session), about
        twenty small kernels, so the exact search replays a graph too."""
        if self.ivf:
            return self._probe(row, k, fixed)
        s, i = self._exact(row[None], k)
        return s[0], i[0], self._every_key

    def _probe(self, row: Any, k: int, fixed: bool = False) -> tuple[Any, Any, Any]:
        """One query's IVF search: (scores, ids, the probe set's candidate count). Candidate slots are
        filled list after list. `fixed` (the CUDA graph's form) scores `graph_budget` slots with the
        unused ones masked, and its result is complete only if the count fits them; otherwise only the
        real candidates are kept first (a host sync on a GPU; on a CPU no wasted scoring).

        One query per decode step: every op here is a kernel launch, and at this size launches and a
        host sync, not arithmetic, were the search's time (p50 0.52 ms for 10M keys on an H200 with a
        sync for the candidate count, 2026-12-03). Without that sync the whole search is one CUDA
        graph (`search_one`)."""
        import torch

        lists = torch.topk(self.centroids @ row, self.nprobe).indices
        lengths, starts = self.lengths[lists], self.starts[lists]
        ends = torch.cumsum(lengths, 0)  # slot ranges [end - length, end) per probed list
        slots = self.slots[: self.graph_budget] if fixed else self.slots
        probe = torch.searchsorted(ends, slots, right=True)  # nprobe for slots past the last
        used = probe < self.nprobe
        probe = probe.clamp_(max=self.nprobe - 1)
        at = (starts - ends + lengths)[probe] + slots  # each slot's index into ids
        if fixed:  # unused slots read key 0, masked below
            at = torch.where(used, at, 0)
        else:  # only the real candidates (from a mapped file: only those are read)
            at, used = at[used], None
        cand = self.ids[at]
        scores = self.rows(cand) @ row
        if used is not None:
            scores = torch.where(used, scores, -float("inf"))
        top = torch.topk(scores, min(k, len(scores)))
        s, i = top.values, torch.where(top.values > -float("inf"), cand[top.indices], -1)
        if len(s) < k:  # fewer slots than asked for
            s = torch.cat([s, torch.full((k - len(s),), -float("inf"), device=self.device)])
            i = torch.cat([i, torch.full((k - len(i),), -1, dtype=torch.long, device=self.device)])
        return s, i, ends[-1]

    def _graph(self, row: Any, k: int, prepare: Any) -> Any:
        """The captured search for k (and `prepare`, when given, inside it), captured and timed against
        the eager form on first use; False where capture failed or the eager form was faster."""
        global _captures
        key = (k, prepare is not None)
        graph = self.graphs.get(key)
        if graph is None:
            _captures += 1
            graph = self._capture(row, k, prepare)
            self.graphs[key] = graph and self._faster(graph, row, k, prepare)
            graph = self.graphs[key]
        return graph

    @staticmethod
    def _replay_graph(graph: tuple, row: Any) -> None:
        """Search `row` with the captured graph (its result packed in graph[2])."""
        query, captured, _ = graph
        query.copy_(row)
        captured.replay()

    def _faster(
        self, graph: tuple, row: Any, k: int, prepare: Any = None, reps: int = CALIBRATION_SEARCHES
    ) -> Any:
        """The graph if it searches faster than the eager form here, else False. The graph saves the
        eager form's launches and its host sync, but scores a fixed number of slots where the eager
        form scores only the real candidates. Sized for the worst case, on unbalanced lists the graph
        lost (10M keys, nprobe 250 on an H200: 617k slots against 158k candidates on average, graph
        0.80 ms, eager 0.52 ms); it is now sized on sampled queries (`graph_budget`), and this check
        keeps whichever form is faster on the index at hand."""
        import time

        import torch

        def ms(search) -> float:
            # Each search waited for, as in use (the caller reads the ids back every time): searches
            # left to overlap on the GPU would favour whichever form syncs less.
            search()  # warm
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                search()
                torch.cuda.synchronize()
            return (time.perf_counter() - start) * 1000 / reps

        # The graph alone: a first query past its slots must not time the eager fallback.
        graph_ms = ms(lambda: self._replay_graph(graph, row))
        eager_ms = ms(lambda: self._one_query(self._prepared(row, prepare), k))
        self.timed[k, prepare is not None] = (graph_ms, eager_ms)
        return graph if graph_ms <= eager_ms else False

    def _capture(self, row: Any, k: int, prepare: Any = None) -> Any:
        """(query buffer, graph, packed result): the search of whatever is copied into the query buffer,
        `prepare` included, its scores, ids and candidate count packed for one read (`_packed`)."""
        import torch

        # float32 whatever the first caller's dtype: `_replay_graph` copies every later query into it
        # (a bf16 hidden state converts exactly; a float32 query into a bf16 buffer would be rounded).
        query = row.float().clone()

        def search():
            return self._packed(self._one_query(self._prepared(query, prepare), k, fixed=True))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                search()  # warm-up outside the capture (kernels, allocator)
            torch.cuda.current_stream().wait_stream(side)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                packed = search()
        except RuntimeError as err:  # an op this torch cannot capture: stay eager (`search_mode` says why)
            torch.cuda.current_stream().wait_stream(side)
            self.graph_error = f"{type(err).__name__}: {str(err)[:200]}"
            return False
        return query, captured, packed

    def _exact(self, q: Any, k: int) -> tuple[Any, Any]:
        import torch

        # The chunk bounds a batch's (queries x keys) score block; one query's scores are one row, so
        # keys in memory are scored at once (one product and one top-k: a step's search, fewer launches).
        chunk = self.chunk if len(q) > 1 or self.mmap else max(self.chunk, self.n)
        best_s = torch.empty(len(q), 0, device=self.device)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=self.device)
        for start in range(0, self.n, chunk):
            block = self.keys[start : start + chunk]
            if self.mmap:
                block = torch.from_numpy(np.asarray(block, dtype=np.float32))
            s, i = torch.topk(q @ block.T, min(k, len(block)), dim=1)
            if start == 0:  # the first chunk's top-k needs no merge (a step's search: the only chunk)
                best_s, best_i = s, i
                continue
            scores, ids = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
            best_s, best_i = scores.gather(1, top), ids.gather(1, top)
        return best_s, best_i
