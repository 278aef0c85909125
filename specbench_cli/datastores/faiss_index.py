"""FAISS helpers of the dense (dresd) datastore: the index shape, training and filling it, search
settings, exact search, and the recall of the built index against brute force."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..types import SpecbenchError

REORDER = 250  # candidates re-ranked exactly by the refine step (DReSD's ScaNN reorder 250)
SELF_QUERIES = 1000  # stored keys used for the self-retrieval figure


def auto_index_string(n: int, flat_max: int) -> str:
    """Exact search up to `flat_max` keys; above, an IVF of ~5*sqrt(N) lists (DReSD's ScaNN shape) whose
    probed lists are scored exactly (IVF,Flat: torch searches the very same lists, see torch_index.py)."""
    if n <= flat_max:
        return "Flat"
    return f"IVF{int(5 * math.sqrt(n))},Flat"


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


def exact_search(
    keys: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1 << 18, device: Any = "cpu"
) -> np.ndarray:
    """Brute-force top-k ids by inner product, a chunk of keys at a time (torch, no faiss): streamed
    from the array on the CPU, or with the keys copied to `device` once (a GPU)."""
    import torch

    from .torch_index import TorchIndex

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    on_cpu = torch.device(device).type == "cpu"
    return TorchIndex(keys, device, mmap=on_cpu, chunk=chunk).search(q, k)[1].cpu().numpy()


def index_quality(
    search: Callable,
    keys: np.ndarray,
    held_keys: np.ndarray,
    exact: bool,
    seed: int,
    backend: str,
    device: Any = "cpu",
) -> dict:
    """recall@k of the index (`search(queries, k) -> (scores, ids)`, numpy) against brute force on
    held-out keys, and the self-retrieval rate."""
    out: dict[str, Any] = {"quality_backend": backend}
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
        got_scores, _ = search(q, k)
        truth = exact_search(keys, q, k, device=device)
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
    top_scores, top = search(q, min(50, len(keys)))
    top = top[:, 0]
    self_scores = np.einsum("qd,qd->q", q, q)
    out["self_retrieval"] = round(float(((top == rows) | (top_scores[:, 0] >= self_scores - 1e-6)).mean()), 4)
    out["self_retrieval_same_id"] = round(float((top == rows).mean()), 4)
    return out
