"""DReSD's dense datastore: the target's own hidden states as keys, the next tokens as values.

    specbench build-index --method dresd --model M --corpus SPEC --out DIR

Recipe (DReSD's official code, huawei-noah/HEBO: embed_data.py, pca.py, index.py): run the target
over every corpus document with teacher forcing, truncated to 1024 tokens; for each position i but the
last, the key is the hidden state at i (final layer by default) and the value is the next 20 tokens,
padded with -1 past the document's end so a continuation never runs into the next document. Keys are
z-scored per dimension, projected with PCA to 64 dimensions and L2-normalised (inner product = cosine).
The scaling and PCA are fitted on the first 1M keys (documents are taken in a seeded random order).

Layout of a datastore folder:
    keys.npy            float16 (N, dim): the normalised, projected keys (DReSD stores fp16 too)
    values.npy          int32 (N, 20): next tokens of each key, -1 = past the document end
    transform.safetensors   mean (H,), std (H,), components (dim, H): the fitted scaling and PCA
    index.faiss         FAISS index over keys.npy (ids = rows), METRIC_INNER_PRODUCT
    manifest.json       see manifest.py, plus model, layer, dim, index, vectors, recall, self-retrieval

Search at eval time (DenseStore.search) goes through faiss-gpu when it is installed and the target is
on a GPU, else an exact inner product in torch on that GPU, else faiss-cpu; `backend` says which.
"""

from __future__ import annotations

import inspect
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..types import LoadedModel, SpecbenchError
from .manifest import new_manifest, read_manifest, staged_build, write_manifest

KEYS_FILE = "keys.npy"
VALUES_FILE = "values.npy"
TRANSFORM_FILE = "transform.safetensors"
INDEX_FILE = "index.faiss"

VALUE_LEN = 20  # DReSD's --n_len: tokens stored per key (drafts use 1 + 10 of them)
PAD = -1  # value slots past the end of a document
MAX_LENGTH = 1024  # DReSD truncates every document to this many tokens
PCA_SAMPLE = 1_000_000  # keys the scaling and PCA are fitted on (DReSD: ~1M)
AUTO_FLAT_MAX = 500_000  # "auto" index: exact search up to this many keys, IVF + PQ + refine above
REORDER = 250  # candidates re-ranked exactly by the refine step (DReSD's ScaNN reorder 250)
RECALL_QUERIES = 1000  # held-out keys used to measure the ANN index's recall
SELF_QUERIES = 1000  # stored keys used for the self-retrieval figure
BACKENDS = ("auto", "faiss-gpu", "torch", "faiss-cpu")


# ----------------------------------------------------------------------------------------------------
# Scaling + PCA, fitted from streamed sums (one pass; the sample never sits in memory)


@dataclass
class KeyTransform:
    """z-score per dimension -> PCA to `components.shape[0]` dims -> L2 norm (DReSD's key recipe)."""

    mean: np.ndarray  # (H,) float32
    std: np.ndarray  # (H,) float32
    components: np.ndarray  # (dim, H) float32, rows are unit eigenvectors, largest variance first
    explained_variance: float = float("nan")  # share of the z-scored variance the dims keep

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, H) -> (n, dim) float32 with unit rows (numpy; tests and CPU use)."""
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        return l2_normalise(z @ self.components.T)

    def to_torch(self, device: Any) -> TorchTransform:
        return TorchTransform(self, device)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"mean": self.mean, "std": self.std, "components": self.components}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> KeyTransform:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(t["mean"], t["std"], t["components"])


class TorchTransform:
    """The same transform with its tensors on the model's device: a query never leaves the GPU to be projected."""

    def __init__(self, transform: KeyTransform, device: Any):
        import torch

        self.mean = torch.from_numpy(transform.mean).to(device)
        self.std = torch.from_numpy(transform.std).to(device)
        self.components_t = torch.from_numpy(np.ascontiguousarray(transform.components.T)).to(device)

    def __call__(self, h: Any) -> Any:
        import torch

        y = ((h.float() - self.mean) / self.std) @ self.components_t
        return torch.nn.functional.normalize(y, dim=-1)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class MomentAccumulator:
    """Running sums of x and x x^T in float64 on the device, from which the scaling and PCA are fitted.

    The covariance of the z-scored keys is the raw covariance divided by std_i * std_j, so one pass of
    sums gives both the scaling and the PCA (DReSD: torch_pca with svd_solver="covariance_eigh").
    """

    def __init__(self, hidden: int, device: Any):
        import torch

        self.n = 0
        self.sum = torch.zeros(hidden, dtype=torch.float64, device=device)
        self.outer = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)

    def add(self, x: Any) -> None:
        x = x.double()
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def fit(self, dim: int) -> KeyTransform:
        import torch

        if self.n < 2:
            raise SpecbenchError(f"the corpus gave {self.n} key(s); the PCA needs at least 2")
        mean = self.sum / self.n
        cov = self.outer / self.n - torch.outer(mean, mean)
        var = cov.diagonal().clamp(min=0)
        # A dimension that never varies (or varies at rounding level) keeps std 1: dividing by ~0
        # would blow rounding noise up to unit variance.
        std = torch.where(var > 1e-12 * var.max().clamp(min=1e-30), var.sqrt(), torch.ones_like(var))
        corr = cov / torch.outer(std, std)
        eigvals, eigvecs = torch.linalg.eigh(corr)  # ascending
        order = torch.argsort(eigvals, descending=True)[:dim]
        comps = eigvecs[:, order].T.contiguous()  # (dim, H)
        # Eigenvectors have no preferred sign; fix it (largest |entry| positive) so builds are reproducible.
        pivot = comps.abs().argmax(dim=1)
        signs = torch.sign(comps.gather(1, pivot[:, None]))
        comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
        total = eigvals.clamp(min=0).sum()
        kept = eigvals[order].clamp(min=0).sum()
        return KeyTransform(
            mean.float().cpu().numpy(),
            std.float().cpu().numpy(),
            comps.float().cpu().numpy(),
            float(kept / total) if total > 0 else float("nan"),
        )


def fit_transform(x: np.ndarray, dim: int) -> KeyTransform:
    """Fit the scaling + PCA on an in-memory (n, H) sample (tests, small stores)."""
    import torch

    acc = MomentAccumulator(x.shape[1], "cpu")
    acc.add(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    return acc.fit(dim)


# ----------------------------------------------------------------------------------------------------
# Values and the FAISS index


def next_token_values(doc: np.ndarray, length: int = VALUE_LEN) -> np.ndarray:
    """(len(doc) - 1, length) int32: row i holds doc[i+1 : i+1+length], padded with PAD past the end."""
    padded = np.concatenate([np.asarray(doc, dtype=np.int32), np.full(length, PAD, dtype=np.int32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded[1:], length)
    return np.ascontiguousarray(windows[: len(doc) - 1])


def auto_index_string(n: int, dim: int) -> str:
    """Exact search for small stores; DReSD's shape for large ones: ~5*sqrt(N) IVF lists, PQ, exact refine."""
    if n <= AUTO_FLAT_MAX:
        return "Flat"
    nlist = int(5 * math.sqrt(n))
    # 4 dims per 8-bit PQ sub-quantiser: FAISS trains 2-dim sub-quantisers ~20x slower, and the refine
    # step re-ranks exactly anyway.
    m = dim // 4 if dim % 4 == 0 else dim // 2 if dim % 2 == 0 else dim
    return f"IVF{nlist},PQ{m},RFlat"


def make_index(factory: str, keys: np.ndarray, seed: int = 0, chunk: int = 1 << 18, console=None):
    """Train (on a sample) and fill a FAISS inner-product index with `keys` (float16 or float32 rows)."""
    import faiss

    dim = keys.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecbenchError(
            f"--index '{factory}' is not a FAISS factory string this faiss accepts ({first}); "
            "try 'auto', 'Flat' or e.g. 'IVF1024,PQ16,RFlat'"
        ) from None
    if not index.is_trained:
        ivf = _ivf_of(index)
        ivf = faiss.downcast_index(ivf) if ivf is not None else None
        if getattr(ivf, "do_polysemous_training", False):
            # Polysemous codes only serve Hamming pre-filtering, which we never use; training them is
            # most of the build time of an IVF-PQ index.
            ivf.do_polysemous_training = False
        nlist = ivf.nlist if ivf is not None else 256
        # DReSD trains ScaNN on 250*sqrt(N) = 50 lists' worth of points; FAISS wants >= 39 per list.
        n_train = min(len(keys), max(50 * nlist, 20_000))
        rows = np.sort(np.random.default_rng(seed).choice(len(keys), n_train, replace=False))
        if console is not None:
            console.print(f"training {factory} on {n_train:,} keys")
        index.train(np.ascontiguousarray(keys[rows], dtype=np.float32))
    for start in range(0, len(keys), chunk):
        index.add(np.ascontiguousarray(keys[start : start + chunk], dtype=np.float32))
    return index


def _ivf_of(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def set_search_params(index, nprobe: int | None, k: int) -> dict:
    """nprobe on the IVF part and the refine factor (REORDER candidates for k results); returns what was set."""
    import faiss

    out: dict[str, Any] = {}
    ivf = _ivf_of(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(min(nprobe, ivf.nlist))
        out["nprobe"] = int(ivf.nprobe)
    refine = faiss.downcast_index(index)
    if isinstance(refine, faiss.IndexRefine):
        refine.k_factor = float(max(1.0, REORDER / max(k, 1)))
        out["k_factor"] = refine.k_factor
    return out


def ordered(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One result row sorted by score, ties by id (deterministic); FAISS's -1 fillers dropped."""
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


def exact_search(keys: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1 << 16) -> np.ndarray:
    """Brute-force top-k ids by inner product, a chunk of keys at a time (never the whole score matrix)."""
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.empty((len(q), 0), dtype=np.float32)
    best_i = np.empty((len(q), 0), dtype=np.int64)
    for start in range(0, len(keys), chunk):
        block = np.ascontiguousarray(keys[start : start + chunk], dtype=np.float32)
        s, i = faiss.knn(q, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        scores = np.concatenate([best_s, s], axis=1)
        ids = np.concatenate([best_i, i + start], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return best_i


# ----------------------------------------------------------------------------------------------------
# Reading a built store


class DenseStore:
    """A built dresd datastore: values memory-mapped, transform and index loaded, search backend chosen."""

    def __init__(
        self, path: Path, target: LoadedModel, backend: str = "auto", nprobe: int | None = None, k: int = 50
    ):
        from ..models import tokenizer_fingerprint

        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if self.manifest.get("method") != "dresd":
            raise SpecbenchError(
                f"datastore {self.path} was built for method '{self.manifest.get('method')}', not 'dresd'; "
                "build one with `specbench build-index --method dresd`"
            )
        check_model(self.manifest, target, tokenizer_fingerprint(target.tokenizer), self.path)
        if backend not in BACKENDS:
            raise SpecbenchError(f"unknown dresd backend '{backend}'; choose from: {', '.join(BACKENDS)}")
        try:
            self.values = np.load(self.path / VALUES_FILE, mmap_mode="r")
            self.keys = np.load(self.path / KEYS_FILE, mmap_mode="r")
            self.transform = KeyTransform.load(self.path / TRANSFORM_FILE)
        except (OSError, ValueError) as e:
            raise SpecbenchError(f"datastore {self.path} is damaged ({e}); rebuild it with --force") from e
        if len(self.values) != len(self.keys) or self.keys.shape[1] != self.transform.dim:
            raise SpecbenchError(f"datastore {self.path} has inconsistent files; rebuild it with --force")
        self.k = k
        self.device = target.model.get_output_embeddings().weight.device
        self.query_transform = self.transform.to_torch(self.device)
        self.backend = self._open_backend(backend, nprobe)

    def __len__(self) -> int:
        return len(self.values)

    def _open_backend(self, backend: str, nprobe: int | None) -> str:
        import faiss
        import torch

        self.requested_backend = backend
        on_gpu = self.device.type == "cuda"
        has_faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if backend == "auto":
            backend = ("faiss-gpu" if has_faiss_gpu else "torch") if on_gpu else "faiss-cpu"
        if backend != "torch":
            index = faiss.read_index(str(self.path / INDEX_FILE))
            self.search_params = set_search_params(index, nprobe or self.manifest.get("nprobe"), self.k)
            if backend == "faiss-cpu":
                self.index = index
                return backend
            if not has_faiss_gpu:
                raise SpecbenchError(
                    "dresd backend 'faiss-gpu' needs faiss-gpu and a GPU; choose from: torch, faiss-cpu"
                )
            try:
                self._gpu_res = faiss.StandardGpuResources()
                self.index = faiss.index_cpu_to_gpu(self._gpu_res, self.device.index or 0, index)
                return backend
            except RuntimeError as e:  # an index type FAISS cannot move to the GPU (e.g. "fs" PQ)
                if self.requested_backend == "faiss-gpu":
                    raise SpecbenchError(
                        f"index {self.manifest.get('index')} cannot run on faiss-gpu ({e})"
                    ) from None
        # Exact search in torch: every key on the model's device, one matrix-vector product per query.
        self.gpu_keys = torch.from_numpy(np.asarray(self.keys, dtype=np.float32)).to(self.device)
        self.search_params = {"exact": True}
        return "torch"

    def search(self, hidden: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids of the k keys nearest to one hidden state (a torch tensor, shape (H,) or (1, H))."""
        import torch

        k = min(k or self.k, len(self))
        with torch.inference_mode():
            q = self.query_transform(hidden.reshape(1, -1))
            if self.backend == "torch":
                scores, ids = torch.topk(self.gpu_keys @ q[0], k)
                return ordered(scores.cpu().numpy(), ids.cpu().numpy())
            scores, ids = self.index.search(q.cpu().numpy().astype(np.float32), k)
        return ordered(scores[0], ids[0])


def check_model(manifest: dict, target: LoadedModel, fingerprint: str, path: Path) -> None:
    """Refuse a store whose keys come from another model (hidden size) or another tokenizer (values)."""
    tok = manifest.get("tokenizer") or {}
    if tok.get("fingerprint") != fingerprint:
        raise SpecbenchError(
            f"datastore {path} was built with the tokenizer of '{tok.get('name')}', which differs from the "
            f"model's ({target.name}); rebuild it with this --model"
        )
    built = manifest.get("model") or {}
    hidden = target.model.config.get_text_config().hidden_size
    if built.get("hidden_size") != hidden:
        raise SpecbenchError(
            f"datastore {path} holds hidden states of size {built.get('hidden_size')} from '{built.get('name')}', "
            f"but {target.name} has size {hidden}; rebuild it with this --model"
        )


# ----------------------------------------------------------------------------------------------------
# Building


@dataclass
class BuildParams:
    layer: int = -1  # hidden_states index: -1 = the final layer (after the final norm), as the engine gives
    dim: int = 64
    index: str = "auto"
    nprobe: int = 250
    batch_size: int = 8
    max_length: int = MAX_LENGTH
    pca_sample: int = PCA_SAMPLE
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict) -> BuildParams:
        p = cls(**{k: options[k] for k in cls.__dataclass_fields__ if options.get(k) is not None})
        if p.dim < 1:
            raise SpecbenchError(f"--dim must be at least 1, got {p.dim}")
        if p.batch_size < 1:
            raise SpecbenchError(f"--batch-size must be at least 1, got {p.batch_size}")
        if p.max_length < 2:
            raise SpecbenchError(f"max_length must be at least 2, got {p.max_length}")
        return p


class KeyWriter:
    """Writes projected keys, which arrive in global position order, to their stored row or aside
    (held-out positions, kept in memory as recall queries)."""

    def __init__(self, keys: np.ndarray, heldout: np.ndarray):
        self.keys, self.heldout = keys, heldout
        self.held = np.zeros((int(heldout.sum()), keys.shape[1]), dtype=np.float32)
        self.stored = self.held_rows = 0

    def write(self, projected: np.ndarray, rows: np.ndarray) -> None:
        aside = self.heldout[rows]
        kept = projected[~aside]
        self.keys[self.stored : self.stored + len(kept)] = kept.astype(np.float16)
        self.stored += len(kept)
        self.held[self.held_rows : self.held_rows + int(aside.sum())] = projected[aside]
        self.held_rows += int(aside.sum())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batch_order(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Documents in a seeded random order (the first keys are a fair PCA sample), then sorted by length
    inside windows of 32 batches so each batch pads little."""
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    window = 32 * batch_size
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        part = sorted(order[w : w + window], key=lambda d: lengths[d])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return batches


def check_layer(loaded: LoadedModel, layer: int) -> None:
    """hidden_states holds the embeddings (0) and every layer's output (1..L); -1 is the final one."""
    n_layers = loaded.model.config.get_text_config().num_hidden_layers
    if not -(n_layers + 1) <= layer <= n_layers:
        raise SpecbenchError(
            f"--layer {layer} is out of range for {loaded.name}; choose from -1 (final) or 0..{n_layers}"
        )


def hidden_batches(
    loaded: LoadedModel, docs: list[np.ndarray], params: BuildParams, console
) -> Iterator[tuple[list[int], list[Any]]]:
    """Teacher-forced forwards: yields (doc ids, [hidden states (len - 1, H) of the chosen layer]) per batch,
    with a progress bar in tokens/s."""
    import torch
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    model = loaded.model
    device = next(model.parameters()).device
    check_layer(loaded, params.layer)
    # Only the hidden states are wanted: skip the (tokens x vocabulary) logits where the model allows.
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    batches = batch_order([len(d) for d in docs], params.batch_size, params.seed)
    total = sum(len(d) for d in docs)
    progress = Progress(
        TextColumn("dresd keys"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens  {task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress, torch.inference_mode():
        task = progress.add_task("keys", total=total, rate="")
        t0, done = time.perf_counter(), 0
        for batch in batches:
            width = max(len(docs[d]) for d in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, d in enumerate(batch):
                ids[row, : len(docs[d])] = torch.from_numpy(docs[d].astype(np.int64))
                mask[row, : len(docs[d])] = 1
            # Right padding: a causal model's real positions never see the pads after them.
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                output_hidden_states=True,
                use_cache=False,
                **kwargs,
            )
            states = out.hidden_states[params.layer]
            yield batch, [states[row, : len(docs[d]) - 1] for row, d in enumerate(batch)]
            done += int(mask.sum())
            progress.update(
                task, completed=done, rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s"
            )


def build_store(
    loaded: LoadedModel,
    docs: list[np.ndarray],
    out_dir: Path,
    manifest: dict,
    params: BuildParams,
    force: bool = False,
    console=None,
) -> dict:
    """Run the model over token documents and write a complete dresd datastore folder, atomically.

    Everything goes into a hidden sibling folder that is renamed at the end. The keys of the first
    `pca_sample` positions are kept raw (float32, on disk) until the scaling and PCA are fitted on them;
    later keys are projected as they come, so memory stays bounded by the batch.
    """
    import torch
    from rich.console import Console

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise SpecbenchError(f"output folder {out_dir} already exists; pass --force to overwrite it")
    truncated = sum(1 for d in docs if len(d) > params.max_length)
    docs = [np.asarray(d[: params.max_length], dtype=np.int64) for d in docs]
    docs = [d for d in docs if len(d) >= 2]
    n_keys = sum(len(d) - 1 for d in docs)
    if n_keys < 2:
        raise SpecbenchError("the corpus gave fewer than 2 positions with a next token: nothing to index")
    hidden_size = loaded.model.config.get_text_config().hidden_size
    if params.dim > hidden_size:
        raise SpecbenchError(f"--dim {params.dim} exceeds {loaded.name}'s hidden size {hidden_size}")
    factory = auto_index_string(n_keys, params.dim) if params.index == "auto" else params.index
    exact = factory.strip() in ("Flat", "IDMap,Flat")

    # Held-out positions measure the ANN index's recall on queries it has not stored; an exact index
    # has recall 1 by construction and keeps every position.
    rng = np.random.default_rng(params.seed + 1)
    n_heldout = 0 if exact else min(RECALL_QUERIES, n_keys // 100)
    heldout = np.zeros(n_keys, dtype=bool)
    heldout[rng.choice(n_keys, n_heldout, replace=False)] = True
    n_stored = n_keys - n_heldout

    t_start = time.perf_counter()
    with staged_build(out_dir) as tmp:
        device = next(loaded.model.parameters()).device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        keys = np.lib.format.open_memmap(
            tmp / KEYS_FILE, mode="w+", dtype=np.float16, shape=(n_stored, params.dim)
        )
        values = np.lib.format.open_memmap(
            tmp / VALUES_FILE, mode="w+", dtype=np.int32, shape=(n_stored, VALUE_LEN)
        )
        writer = KeyWriter(keys, heldout)
        sample_cap = min(params.pca_sample, n_keys)
        raw = np.lib.format.open_memmap(
            tmp / "sample.npy", mode="w+", dtype=np.float32, shape=(sample_cap, hidden_size)
        )
        moments = MomentAccumulator(hidden_size, device)
        transform: KeyTransform | None = None
        row = n_sampled = n_values = 0  # next global position, keys in the PCA sample, value rows written

        t_forward = time.perf_counter()
        for batch, states in hidden_batches(loaded, docs, params, console):
            for d, h in zip(batch, states, strict=True):
                rows = np.arange(row, row + len(h))
                row += len(h)
                # Values are known from the tokens alone; they follow the stored-key order.
                keep = ~heldout[rows]
                values[n_values : n_values + int(keep.sum())] = next_token_values(docs[d])[keep]
                n_values += int(keep.sum())
                take = min(len(h), sample_cap - n_sampled) if transform is None else 0
                if take:
                    moments.add(h[:take])
                    raw[n_sampled : n_sampled + take] = h[:take].float().cpu().numpy()
                    n_sampled += take
                    if n_sampled == sample_cap:  # sample complete: fit, then project it (rows 0..cap-1)
                        transform = moments.fit(params.dim)
                        query_tf = transform.to_torch(device)
                        for start in range(0, sample_cap, 1 << 15):
                            chunk = torch.from_numpy(np.asarray(raw[start : start + (1 << 15)])).to(device)
                            writer.write(query_tf(chunk).cpu().numpy(), np.arange(start, start + len(chunk)))
                if take < len(h):
                    writer.write(query_tf(h[take:]).cpu().numpy(), rows[take:])
        t_forward = time.perf_counter() - t_forward
        if transform is None or not writer.stored == n_values == n_stored or writer.held_rows != n_heldout:
            raise RuntimeError("dresd build: key and value counts disagree (a bug)")
        held_keys = writer.held
        keys.flush()
        values.flush()
        del raw
        (tmp / "sample.npy").unlink()
        transform.save(tmp / TRANSFORM_FILE)

        import faiss

        t_index = time.perf_counter()
        keys_r = np.load(tmp / KEYS_FILE, mmap_mode="r")
        index = make_index(factory, keys_r, params.seed, console=console)
        search_params = set_search_params(index, params.nprobe, 50)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        t_index = time.perf_counter() - t_index
        quality = index_quality(index, keys_r, held_keys, exact, params.seed)

        full = dict(manifest)
        full.update(
            method="dresd",
            tokens=int(sum(len(d) for d in docs)),
            documents=len(docs),
            vectors=n_stored,
            model={
                "name": loaded.name,
                "sha256": loaded.sha256,
                "hidden_size": hidden_size,
                "num_layers": loaded.model.config.get_text_config().num_hidden_layers,
                "dtype": loaded.dtype,
                "device": str(device),
            },
            layer=params.layer,
            dim=params.dim,
            index=factory,
            nprobe=search_params.get("nprobe"),
            value_len=VALUE_LEN,
            pad=PAD,
            explained_variance=round(transform.explained_variance, 4),
            pca_fitted_on=n_sampled,
            **quality,
        )
        full["build"] = dict(full.get("build") or {}) | {
            "params": dict((full.get("build") or {}).get("params") or {}) | params.__dict__,
            "seconds": round(time.perf_counter() - t_start, 3),
            "forward_seconds": round(t_forward, 3),
            "index_seconds": round(t_index, 3),
            "tokens_per_s": round(sum(len(d) for d in docs) / max(t_forward, 1e-9), 1),
            "truncated_documents": truncated,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda"
            else None,
        }
        full["files"] = {
            "keys": KEYS_FILE,
            "values": VALUES_FILE,
            "transform": TRANSFORM_FILE,
            "index": INDEX_FILE,
        }
        full["build"]["bytes_on_disk"] = sum(f.stat().st_size for f in tmp.iterdir())
        write_manifest(tmp, full)
    return full


def index_quality(index, keys: np.ndarray, held_keys: np.ndarray, exact: bool, seed: int) -> dict:
    """recall@k of the index against brute force on held-out keys, and the self-retrieval rate."""
    out: dict[str, Any] = {"quality_backend": "faiss-cpu"}
    if exact or len(held_keys) == 0:
        out["recall"] = {
            "at_10": 1.0,
            "at_50": 1.0,
            "queries": 0,
            "note": "exact index: recall 1 by construction",
        }
    else:
        k = min(50, len(keys))
        q = np.ascontiguousarray(held_keys, dtype=np.float32)
        got_scores, _ = index.search(q, k)
        truth = exact_search(keys, q, k)
        truth_scores = np.einsum(
            "qd,qkd->qk", q, np.asarray(keys[truth.ravel()], dtype=np.float32).reshape(*truth.shape, -1)
        )
        recall = {}
        for kk in sorted({min(10, k), k}):
            # Tie-aware: a result counts when it scores at least the exact k-th best. Stores hold exact
            # duplicates (the same prompt prefix in many documents), and which of several equal keys
            # comes back is not an error.
            kth = truth_scores[:, kk - 1 : kk] - 1e-6
            recall[f"at_{kk}"] = round(float((got_scores[:, :kk] >= kth).mean()), 4)
        out["recall"] = recall | {"queries": len(held_keys)}
    # Self-retrieval: a stored key should come back first, or a key scoring at least as high: an exact
    # duplicate (the same prompt prefix in many documents) or, since fp16 keys are not exactly unit
    # length, a near-duplicate a hair longer than itself.
    rows = np.sort(
        np.random.default_rng(seed + 2).choice(len(keys), min(SELF_QUERIES, len(keys)), replace=False)
    )
    q = np.asarray(keys[rows], dtype=np.float32)
    # Searched with the drafter's k (50): the refine step re-ranks k * k_factor candidates.
    top_scores, top = index.search(q, min(50, len(keys)))
    top = top[:, 0]
    self_scores = np.einsum("qd,qd->q", q, q)
    out["self_retrieval"] = round(float(((top == rows) | (top_scores[:, 0] >= self_scores - 1e-6)).mean()), 4)
    out["self_retrieval_same_id"] = round(float((top == rows).mean()), 4)
    return out


def corpus_documents(source, tokenizer, console) -> tuple[list[np.ndarray], str]:
    """Token documents of a corpus source, and how they were formed (for the manifest).

    A `generate:` corpus gives prompt + answer: the chat-formatted prompt exactly as `eval` builds it,
    then the model's answer, so each stored key saw the same kind of context a query will see (DReSD's
    "Question: ...\\nAnswer:\\n" + response). Other corpora are their plain texts.
    """
    from ..suites import build_prompt_ids
    from .corpus import tokenize_documents

    if source.kind == "generate" and source.records:
        answers = {(r["id"], r["turn"]): r["answer"] for r in source.records}
        docs = []
        for r in source.records:
            prior = [answers[(r["id"], t)] for t in range(r["turn"])]
            prompt = build_prompt_ids(tokenizer, list(r["turns"]), prior)
            answer = tokenizer(r["answer"], add_special_tokens=False)["input_ids"]
            docs.append(np.asarray(prompt + list(answer), dtype=np.int64))
        return docs, "chat prompt + generated answer"
    docs = list(tokenize_documents(source.texts(), tokenizer, total=source.documents, console=console))
    return docs, "corpus text"


def build(model_spec: str, corpus_spec: str, out_dir: Path, options: dict, console) -> dict:
    """`build-index --method dresd`: hidden-state keys of the target over the corpus, then the FAISS index."""
    from rich.console import Console

    from ..models import load_model, tokenizer_fingerprint
    from .corpus import iter_corpus

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    options = dict(options)
    params = BuildParams.from_options(options)
    if out_dir.exists() and not options.get("force"):  # before the model and corpus cost anything
        raise SpecbenchError(f"output folder {out_dir} already exists; pass --force to overwrite it")
    loaded = load_model(model_spec, options.get("dtype") or "float32", options.get("device") or "cpu")
    check_layer(loaded, params.layer)  # before a generate: corpus spends minutes on answers
    options.setdefault("generated_dir", out_dir.parent / "generated")
    source = iter_corpus(corpus_spec, options, loaded=loaded, console=console)
    docs, formed = corpus_documents(source, loaded.tokenizer, console)
    tokenizer = loaded.tokenizer
    manifest = new_manifest(
        method="dresd",
        tokenizer={
            "name": model_spec,
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": len(tokenizer),
        },
        corpus=source.to_manifest() | {"documents_formed_from": formed},
        params={"max_docs": options.get("max_docs")},
    )
    full = build_store(
        loaded, docs, out_dir, manifest, params, force=bool(options.get("force")), console=console
    )
    console.print(
        f"dresd datastore {out_dir}: {full['vectors']:,} keys of dim {full['dim']} from {full['documents']:,} documents "
        f"({full['build']['tokens_per_s']:,.0f} tok/s forward), index {full['index']}, "
        f"recall@10 {full['recall'].get('at_10')}, self-retrieval {full['self_retrieval']:.3f}, "
        f"{full['build']['bytes_on_disk'] / 2**20:,.1f} MiB, {full['build']['seconds']:.1f} s"
    )
    return full


def build_from_token_docs(
    docs: list[list[int]] | list[np.ndarray],
    out_dir: Path,
    loaded: LoadedModel,
    force: bool = False,
    **params: Any,
) -> Path:
    """Build a dresd datastore straight from token lists with an already loaded model (tests, benchmarks)."""
    from ..models import tokenizer_fingerprint

    manifest = new_manifest(
        method="dresd",
        tokenizer={"name": loaded.name, "fingerprint": tokenizer_fingerprint(loaded.tokenizer)},
        corpus={"spec": "token-docs", "kind": "tokens", "description": "token documents given in code"},
        params={},
    )
    build_store(
        loaded,
        [np.asarray(d, dtype=np.int64) for d in docs],
        Path(out_dir),
        manifest,
        BuildParams(**params),
        force=force,
    )
    return Path(out_dir)
