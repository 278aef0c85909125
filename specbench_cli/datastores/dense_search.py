"""The dense store's index: built with faiss where it is installed, else in torch; searched with
faiss-gpu, faiss-cpu or torch (exact or IVF, CUDA or CPU), whichever this machine has.

Build (`build_search`): the index shape is a FAISS factory string ("Flat" or "IVF<n>,Flat" from
`auto`, anything else by hand). With faiss the index is trained and written as index.faiss, and an
IVF's lists are also written as plain arrays (torch_index.py) so torch searches the same lists. Without
faiss (the GPU machine) only "Flat" and "IVF<n>,Flat" can be built, and the lists are trained in torch
on the extraction device. An ANN index's recall@10/@50 against exact search is measured on held-out
keys, which are kept in recall_queries.npy so anyone can measure it again.

Open (`open_search`): backend "auto" takes faiss-gpu when the target is on a GPU and faiss-gpu is
installed, else torch on that GPU; on the CPU faiss-cpu when installed and index.faiss exists, else
torch. `mmap=True` memory-maps the store instead of reading it into RAM (faiss IO_FLAG_MMAP, or torch
reading keys.npy through np.load(mmap_mode="r")).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..types import SpecbenchError
from .faiss_index import index_quality, make_index, ordered, set_search_params
from .torch_index import CENTROIDS_FILE, TorchIndex, ivf_from_faiss, train_ivf, write_ivf

INDEX_FILE = "index.faiss"
QUERIES_FILE = "recall_queries.npy"
BACKENDS = ("auto", "faiss-gpu", "torch", "faiss-cpu")
TORCH_FACTORY = re.compile(r"^(Flat|IVF(\d+),Flat)$")


def faiss_module() -> Any:
    """faiss when installed, else None (the GPU machine has none: torch takes over)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def has_faiss_gpu(faiss: Any) -> bool:
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_factory(factory: str) -> None:
    """Refuse, before any forward, an index shape this machine cannot build (no faiss: torch's two)."""
    if factory != "auto" and faiss_module() is None and not TORCH_FACTORY.match(factory.strip()):
        raise SpecbenchError(
            f"--opt index={factory} needs faiss, which is not installed; use auto, Flat or IVF<n>,Flat"
        )


def is_exact(factory: str) -> bool:
    return factory.strip() in ("Flat", "IDMap,Flat")


def build_search(
    folder: Path,
    keys: np.ndarray,
    factory: str,
    held: np.ndarray,
    nprobe: int,
    seed: int,
    device: Any,
    console,
) -> dict:
    """Write the index of `keys` (memory-mapped rows of keys.npy) into `folder`; returns manifest fields."""
    import torch

    faiss = faiss_module()
    exact = is_exact(factory)
    t0 = time.perf_counter()
    if faiss is not None:
        index = make_index(factory, keys, seed, console=console)
        params = set_search_params(index, nprobe, 50)
        faiss.write_index(index, str(folder / INDEX_FILE))
        lists = ivf_from_faiss(index)
        if lists is not None:
            write_ivf(folder, *lists)
        search, backend = index.search, "faiss-cpu"
    else:
        check_factory(factory)
        shape = TORCH_FACTORY.match(factory.strip())
        if shape.group(2):
            nlist = min(int(shape.group(2)), len(keys))
            if console is not None:
                console.print(f"training {nlist:,} IVF lists in torch on {device}")
            train_ivf(keys, nlist, max(50 * nlist, 20_000), seed, device, folder)
        backend = f"torch-{torch.device(device).type}"
        params = {}
    seconds = time.perf_counter() - t0
    if not exact:
        np.save(folder / QUERIES_FILE, np.ascontiguousarray(held, dtype=np.float32))
    if faiss is None:
        torch_index = TorchIndex(keys, device, folder, nprobe)
        params = torch_index.params

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            s, i = torch_index.search(torch.from_numpy(q), k)
            return s.cpu().numpy(), i.cpu().numpy()

    quality = index_quality(search, keys, held, exact, seed, backend, device)
    return {"index": factory, "nprobe": params.get("nprobe"), "index_seconds": round(seconds, 3), **quality}


class DenseSearch:
    """The opened index of a dense store: `search(query (1, dim) tensor, k) -> (scores, ids)`, best first."""

    def __init__(
        self,
        folder: Path,
        keys: np.ndarray,
        manifest: dict,
        backend: str,
        nprobe: int | None,
        k: int,
        device,
        mmap,
    ):
        if backend not in BACKENDS:
            raise SpecbenchError(f"unknown dresd backend '{backend}'; choose from: {', '.join(BACKENDS)}")
        self.folder, self.requested = Path(folder), backend
        faiss = faiss_module()
        on_gpu = device.type == "cuda"
        has_index_file = (self.folder / INDEX_FILE).is_file()
        if backend == "auto":
            if on_gpu:
                backend = "faiss-gpu" if has_faiss_gpu(faiss) and has_index_file else "torch"
            else:
                backend = "faiss-cpu" if faiss is not None and has_index_file else "torch"
        if backend in ("faiss-cpu", "faiss-gpu") and (faiss is None or not has_index_file):
            raise SpecbenchError(
                f"dresd backend '{backend}' needs faiss and {INDEX_FILE} in {folder}; use backend=torch"
            )
        nprobe = nprobe or manifest.get("nprobe") or 1
        self.backend = backend
        if backend == "torch":
            self.index = TorchIndex(keys, device, self.folder, nprobe, mmap=mmap)
            self.params = self.index.params | {"mmap": self.index.mmap}
            return
        # faiss maps an IVF's lists with IO_FLAG_MMAP, a flat index's codes with IO_FLAG_MMAP_IFC (not both).
        ivf = (self.folder / CENTROIDS_FILE).is_file()
        flags = (
            ((faiss.IO_FLAG_MMAP if ivf else faiss.IO_FLAG_MMAP_IFC) | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        )
        index = faiss.read_index(str(self.folder / INDEX_FILE), flags)
        if index.ntotal != len(keys) or index.d != keys.shape[1]:
            raise SpecbenchError(
                f"datastore {folder} is damaged: {INDEX_FILE} holds {index.ntotal:,} vectors of dim {index.d}, "
                f"not {len(keys):,}"
            )
        self.params = set_search_params(index, nprobe, k) | {"mmap": bool(mmap)}
        self.index = index
        if backend == "faiss-gpu":
            if not has_faiss_gpu(faiss) or not on_gpu:
                raise SpecbenchError(
                    "dresd backend 'faiss-gpu' needs faiss-gpu and a GPU; choose torch or faiss-cpu"
                )
            try:
                self._gpu_res = faiss.StandardGpuResources()
                self.index = faiss.index_cpu_to_gpu(self._gpu_res, device.index or 0, index)
            except RuntimeError as e:  # an index type faiss cannot move to the GPU (e.g. "fs" PQ)
                if self.requested == "faiss-gpu":
                    raise SpecbenchError(
                        f"index {manifest.get('index')} cannot run on faiss-gpu ({e})"
                    ) from None
                self.backend = "torch"
                self.index = TorchIndex(keys, device, self.folder, nprobe, mmap=mmap)
                self.params = self.index.params | {"mmap": self.index.mmap}

    def search_mode(self) -> str:
        """How searches have run so far: faiss's own, or torch's CUDA graph or eager form (with the
        timings that chose it). Known only after the first search: `eval` records it after its warm-up."""
        return self.index.search_mode() if self.backend == "torch" else self.backend

    def search_raw(self, raw: Any, k: int, prepare: Any) -> tuple[np.ndarray, np.ndarray]:
        """`search` of one raw query (a hidden state), `prepare` mapping it to a key vector: on the torch
        backend inside the search (its CUDA graph), read back once (`TorchIndex.search_one`)."""
        if self.backend == "torch":
            return ordered(*self.index.search_one(raw, k, prepare))
        return self.search(prepare(raw.reshape(1, -1)), k)

    def search(self, query: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids of one search vector's k nearest keys (a (1, dim) tensor), best first."""
        if self.backend == "torch":
            return ordered(*self.index.search_one(query, k))
        scores, ids = self.index.search(query.cpu().numpy().astype(np.float32), k)
        return ordered(scores[0], ids[0])
