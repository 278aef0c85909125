"""Dense (dresd) stores at scale: key extraction, PCA, index build, recall@10 and search latency.

    python3 bench/dense_at_scale.py --device cuda --out bench/results/X/dense_at_scale.json   # ~2 min
    nice -n 10 python3 bench/dense_at_scale.py --device cpu --out X.json                      # modest

Every figure comes from the product's own functions (specbench_cli/datastores/): no faiss and no
network needed (on a machine without faiss the index is trained and searched in torch, as the
product does there).

1. Extraction (`key_extraction.hidden_batches`, packed rows of 1024 tokens, the build-index default
   of 64 rows per forward): a random-weight model of a real shape (bench/shapes.py; qwen2.5-coder-1.5b
   on a GPU, smollm2-135m on the CPU) over random-token documents of 50..1024 tokens. Random weights
   cost what the real ones cost per forward. Tokens/s of the forwards, then the PCA
   (`pca.MomentAccumulator` on the same device) fitted on the keys: its time on its own. Then the
   product's whole dresd build over the same documents (`dresd.write_store`, "build"): its key pass
   in tokens/s is what `build-index` reports.
2. Search scale: SYNTHETIC keys (the JSON says so), unit vectors of the PCA dimension drawn around
   random cluster centres (real keys are clustered; uniform random keys would be a needlessly hard
   case for IVF), N per --sizes. For each N: the product's index build (`dense_search.build_search`:
   Flat at or below --flat-max, IVF above, trained on the device), its recall@10 against exact search
   on held-out queries (as the build records it), and per-query search latency p50/p99 of the
   product's search (`dense_search.DenseSearch`, backend auto: torch on a GPU without faiss-gpu) for
   the built index and for exact search over the same keys.
Peak memory: the process's peak RSS and, on a GPU, peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import device_info, random_loaded, resolve_device, sync, write_json  # noqa: E402

DEFAULTS = {  # device type -> (model shape, dtype, extraction tokens, search sizes)
    "cuda": ("qwen2.5-coder-1.5b", "bfloat16", 1_000_000, "1000000,10000000"),
    "cpu": ("smollm2-135m", "float32", 8_000, "100000,2000000"),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--shape", default=None, help="model shape for extraction (bench/shapes.py)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--extract-tokens", type=int, default=None, help="tokens of the extraction run")
    p.add_argument("--rows-per-batch", type=int, default=64, help="packed rows per forward (product default)")
    p.add_argument("--row-tokens", type=int, default=1024, help="longest document = row width")
    p.add_argument("--sizes", default=None, help="comma-separated key counts of the search part")
    p.add_argument("--dim", type=int, default=64, help="PCA dimension (DReSD: 64)")
    p.add_argument("--flat-max", type=int, default=1_000_000, help="exact index up to this many keys")
    p.add_argument("--nprobe", type=int, default=250)
    p.add_argument("--queries", type=int, default=200, help="timed single-query searches per size")
    p.add_argument("--recall-queries", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--no-faiss", action="store_true", help="build and search as on a machine without faiss (torch)"
    )
    return p.parse_args(argv)


def random_documents(n_tokens: int, longest: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        n = int(min(rng.integers(50, longest + 1), max(n_tokens - total, 2)))
        docs.append(rng.integers(0, vocab, n))
        total += n
    return docs


def extraction(args, device: str) -> dict[str, Any]:
    import torch

    from specbench_cli.datastores.key_extraction import hidden_batches
    from specbench_cli.datastores.pca import MomentAccumulator

    loaded = random_loaded(args.shape, args.dtype, device)
    hidden = loaded.model.config.hidden_size
    docs = random_documents(args.extract_tokens, args.row_tokens, loaded.model.config.vocab_size)
    warm_tokens = min(args.rows_per_batch * args.row_tokens, max(args.extract_tokens // 4, 2))
    warm = random_documents(warm_tokens, args.row_tokens, 100, seed=1)
    for _ in hidden_batches(loaded, warm, -1, args.rows_per_batch, 0):  # kernels, allocator
        pass
    sync(device)
    moments = MomentAccumulator(hidden, device)
    forward_s = pca_s = 0.0
    t = time.perf_counter()
    for _, states in hidden_batches(loaded, docs, -1, args.rows_per_batch, 0):
        sync(device)
        forward_s += time.perf_counter() - t
        t = time.perf_counter()
        moments.add(torch.cat(states))  # DReSD fits on the first 1M keys: every key here is a sample
        sync(device)
        pca_s += time.perf_counter() - t
        t = time.perf_counter()
    t = time.perf_counter()
    transform = moments.fit(args.dim)
    pca_s += time.perf_counter() - t
    tokens = sum(len(d) for d in docs)
    # The build resets the GPU's peak-memory counter: keep the extraction's peak to report the larger.
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    build = key_pass(loaded, docs, args)
    del loaded
    return {
        "model_shape": args.shape,
        "weights": "random (the real shape's cost per forward)",
        "dtype": args.dtype,
        "documents": len(docs),
        "tokens": tokens,
        "rows_per_batch": args.rows_per_batch,
        "row_tokens": args.row_tokens,
        "forward_seconds": round(forward_s, 3),
        "tokens_per_s": round(tokens / forward_s, 1),
        "pca": {
            "keys": moments.n,
            "hidden": hidden,
            "dim": args.dim,
            "seconds": round(pca_s, 3),
            "explained_variance": round(transform.explained_variance, 4),
        },
        "build": build,
        "peak_gpu_mb": round(peak_mb, 1),
    }


def key_pass(loaded: Any, docs: list[np.ndarray], args) -> dict[str, Any]:
    """The product's own dresd build (`dresd.write_store`) over the same documents: its key pass
    (forwards, values, the PCA sample and fit, projection, key writes) is the manifest's
    `build.tokens_per_s`, the figure `build-index` reports; the forwards alone are the bound above."""
    from specbench_cli.datastores.base import BuildInput
    from specbench_cli.datastores.dresd import DresdOptions, write_store

    opts = DresdOptions(dim=args.dim, max_length=args.row_tokens)
    with tempfile.TemporaryDirectory(prefix="dense-build-") as tmp:
        m = write_store(BuildInput(docs, opts, loaded, batch_size=args.rows_per_batch), Path(tmp))
    return {
        "function": "specbench_cli.datastores.dresd.write_store",
        "vectors": m["vectors"],
        "index": m["index"],
        "pca_fitted_on": m["pca_fitted_on"],
        **{k: m["build"][k] for k in ("forward_seconds", "tokens_per_s", "index_seconds", "peak_gpu_mb")},
    }


def clustered_keys(n: int, dim: int, seed: int, device: str, chunk: int = 1 << 20) -> np.ndarray:
    """(n, dim) float16 unit keys around 4096 random centres (built on the device, chunk by chunk)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(4096, dim, generator=gen, device=device), dim=1)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        pick = torch.randint(0, 4096, (m,), generator=gen, device=device)
        x = centres[pick] + 0.35 * torch.randn(m, dim, generator=gen, device=device) / dim**0.5
        out[start : start + m] = torch.nn.functional.normalize(x, dim=1).half().cpu().numpy()
    return out


def latency(search, queries, k: int = 50) -> dict[str, float]:
    """p50 / p99 / mean ms of one search (one query, as one decode step issues it)."""
    times = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        search(q[None], k)  # returns numpy: the device work is finished
        if i >= 5:  # the first calls warm caches and kernels
            times.append(1000 * (time.perf_counter() - t))
    times.sort()
    return {
        "p50_ms": round(times[len(times) // 2], 4),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 4),
        "mean_ms": round(float(np.mean(times)), 4),
    }


def search_scale(args, device: str, n: int) -> dict[str, Any]:
    import torch

    from specbench_cli.datastores.dense_search import DenseSearch, build_search
    from specbench_cli.datastores.faiss_index import auto_index_string
    from specbench_cli.datastores.torch_index import TorchIndex

    keys = clustered_keys(n + args.recall_queries, args.dim, seed=n % 9973, device=device)
    held, keys = keys[: args.recall_queries].astype(np.float32), keys[args.recall_queries :]
    factory = auto_index_string(n, args.flat_max)
    dev = torch.device(device)
    row: dict[str, Any] = {"keys": n, "synthetic_keys": True, "index": factory}
    with tempfile.TemporaryDirectory(prefix="dense-at-scale-") as tmp:
        folder = Path(tmp)
        np.save(folder / "keys.npy", keys)
        mapped = np.load(folder / "keys.npy", mmap_mode="r")
        t = time.perf_counter()
        built = build_search(folder, mapped, factory, held, args.nprobe, 0, dev, None)
        row["build_seconds"] = round(time.perf_counter() - t, 3)
        row |= {
            k: built[k] for k in ("index_seconds", "nprobe", "recall", "self_retrieval", "quality_backend")
        }
        queries = torch.from_numpy(held[: args.queries + 5]).to(dev)
        manifest = {"index": factory, "nprobe": built["nprobe"]}
        index = DenseSearch(folder, mapped, manifest, "auto", args.nprobe, 50, dev, False)
        row["backend"], row["search_params"] = index.backend, index.params
        row["search"] = latency(index.search, queries)
        if index.backend == "torch" and index.index.ivf:  # the fixed-shape search's slots vs real candidates
            ivf = index.index
            row["search_mode"] = ivf.search_mode()
            row["candidate_slots"] = ivf.graph_budget  # the graph's; the worst case in search_params
            row["mean_candidates"] = round(float(ivf.candidate_counts(queries).float().mean()), 1)
        del index
        if factory != "Flat":  # the same keys searched exactly: why an IVF above flat_max
            exact = TorchIndex(mapped, dev)  # no folder: no IVF lists, every key scored

            def exact_search(q, k):
                return exact.search_one(q, k)  # a decode step's form (its CUDA graph on a GPU)

            row["exact_search"] = {"backend": "torch"} | latency(exact_search, queries)
            del exact
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


def dense_search_faiss() -> str | None:
    from specbench_cli.datastores.dense_search import faiss_module

    faiss = faiss_module()
    return None if faiss is None else faiss.__version__


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch

    from specbench_cli.files import peak_rss_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_faiss:
        from specbench_cli.datastores import dense_search

        dense_search.faiss_module = lambda: None
    device = resolve_device(args.device)
    shape, dtype, tokens, sizes = DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
    args.shape, args.dtype = args.shape or shape, args.dtype or dtype
    args.extract_tokens = args.extract_tokens or tokens
    sizes = [int(s) for s in (args.sizes or sizes).split(",")]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "study": "dense_at_scale",
        "machine": device_info() | {"cpus": os.cpu_count()},
        "device": device,
        "faiss": dense_search_faiss(),
        "extraction": extraction(args, device),
        "search": {
            "note": "synthetic keys (unit vectors around 4096 random centres), not a model's; "
            "queries held out from the same distribution; latency is one query per call, k=50",
            "dim": args.dim,
            "flat_max": args.flat_max,
            "sizes": [search_scale(args, device, n) for n in sizes],
        },
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    # A shared CPU's timings depend on what else runs: the 1-minute load average before and after.
    result["load_average_1min"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device.startswith("cuda"):
        last = torch.cuda.max_memory_allocated() / 2**20  # since the build's reset
        result["peak_gpu_mb"] = round(max(last, result["extraction"]["peak_gpu_mb"]), 1)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
