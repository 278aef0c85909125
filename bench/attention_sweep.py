"""Which split-kernel configuration is fastest for each tree size: a sweep of the Triton tree-attention
kernels (`specbench_cli/engine/attention.py`) over query rows per program, keys per inner step, key-range
chunks, warps and pipeline stages, per attention shape, tree size and context length.

    python3 bench/attention_sweep.py --out $OUT/sweep.json                     # H200: ~3 minutes
    python3 bench/attention_sweep.py --out /tmp/s.json --shapes 2x6x32 --sizes 1,4 --contexts 40 \\
        --length 128 --device cpu       # plumbing only, with TRITON_INTERPRET=1 and triton installed

A shape is KVHEADSxGROUPSxDIM (Qwen2.5-Coder-1.5B: 2x6x128; its 0.5B: 2x7x64). Each timing is one CUDA
graph of --calls kernel pairs (split + merge) replayed --reps times, as the compiled runner replays
them. The JSON keeps every timing, the configuration with the lowest mean time over the contexts per
(shape, size), the times of the rule used before the first sweep and of the configuration the table
holds now (`tabled`), and the `KERNEL_CONFIGS` table to paste.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

from shapes import device_info, write_json


def random_tree(size: int, seed: int) -> list[int]:
    """Parents of a random tree of `size` nodes (node 0 the root), as the drafters' trees come."""
    import random

    rng = random.Random(seed)
    return [-1] + [rng.randrange(i) for i in range(1, size)]


def visibility(parents: list[int]) -> Any:
    import torch

    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    for i in range(n):
        p = parents[i]
        while p >= 0:
            anc[i, p] = True
            p = parents[p]
    return anc


def time_config(attn: Any, tensors: tuple, config: Any, calls: int, reps: int, cuda: bool) -> float:
    """Microseconds per kernel pair with `config` forced."""
    import torch

    q, k, v, mask, scale = tensors
    attn._OVERRIDE = config
    try:
        attn.triton_tree_attention(q, k, v, mask, scale)  # compile outside the timing
        if not cuda:
            begin = time.perf_counter()
            for _ in range(reps):
                attn.triton_tree_attention(q, k, v, mask, scale)
            return (time.perf_counter() - begin) / reps * 1e6
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                attn.triton_tree_attention(q, k, v, mask, scale)
        graph.replay()
        times = []
        for _ in range(reps):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) * 1000 / calls)
        return statistics.median(times)
    finally:
        attn._OVERRIDE = None


def candidates(attn: Any, rows: int, length: int) -> list[Any]:
    out = []
    for block_m, block_n, splits, warps in itertools.product(
        (16, 32, 64, 128), (32, 64, 128), (1, 2, 4, 8, 16, 32, 64, 128), (4, 8)
    ):
        if block_m > max(16, 2 * rows) or splits * block_n > 2 * length or (warps == 8 and block_m < 64):
            continue  # row blocks mostly padding, chunks past any cache, or warps with nothing to do
        out.append(attn.KernelConfig(block_m, block_n, splits, warps))
        if block_m >= 64 and block_n == 128:  # at 3 stages the H200 sweep found these too big to launch
            out.append(attn.KernelConfig(block_m, block_n, splits, warps, stages=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="2x6x128,2x7x64")
    parser.add_argument("--sizes", default="1,16,32,48,64,80,81,96,129")
    parser.add_argument("--contexts", default="300,1000,2000", help="live slots before the tree")
    parser.add_argument("--length", type=int, default=4352, help="static cache slots (the runner's)")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)

    import torch
    from triton.runtime.errors import OutOfResources

    from specbench_cli.engine import attention as attn

    cuda = args.device == "cuda"
    dtype = getattr(torch, args.dtype)
    sizes = [int(s) for s in args.sizes.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    result: dict[str, Any] = {"machine": device_info(), "dtype": args.dtype, "length": args.length}
    result["contexts"], result["shapes"], table = contexts, {}, {}
    began = time.time()
    for shape in args.shapes.split(","):
        kv_heads, groups, dim = (int(x) for x in shape.split("x"))
        per_size = result["shapes"][shape] = {}
        for size in sizes:
            rows = groups * size
            gen = torch.Generator(device=args.device).manual_seed(size)
            # The query as the model hands it over: (query heads, inputs, dim), a transposed view.
            q = torch.randn(size, kv_heads * groups, dim, device=args.device, dtype=dtype, generator=gen)
            q = q.transpose(0, 1)
            k = torch.randn(kv_heads, args.length, dim, device=args.device, dtype=dtype, generator=gen)
            v = torch.randn_like(k)
            vis = visibility(random_tree(size, size)).to(args.device)
            timings: dict[str, list[float]] = {}
            too_big: set[str] = set()  # configurations this GPU cannot launch (compiled before any capture)
            old = attn.default_config(rows, args.length, kv_heads)
            tabled = attn.kernel_config(rows, args.length, kv_heads, dim, dtype == torch.float32)  # run now
            for context in contexts:
                mask = attn.tree_mask(vis, torch.tensor(context, device=args.device))
                tensors = (q, k, v, mask, dim**-0.5)
                for config in dict.fromkeys([old, tabled, *candidates(attn, rows, args.length)]):
                    key = config.key
                    if key in too_big:
                        continue
                    try:
                        took = time_config(attn, tensors, config, args.calls, args.reps, cuda)
                    except OutOfResources:  # the tiles need more shared memory than the GPU has
                        too_big.add(key)
                        continue
                    timings.setdefault(key, []).append(took)
            old_key = old.key
            timings = {key: t for key, t in timings.items() if key not in too_big}
            best = min(timings, key=lambda key: statistics.fmean(timings[key]))
            per_size[str(size)] = {
                "rows": rows,
                "best": best,
                "best_us": timings[best],
                "before": old_key,
                "before_us": timings[old_key],
                "tabled": tabled.key,
                "tabled_us": timings.get(tabled.key),
                "timings_us": timings,
                "too_big": sorted(too_big),
            }
            table.setdefault(dim, {})[rows] = best
            print(f"{shape} size {size:4d}: best {best:14s} {[round(t, 1) for t in timings[best]]} us, "
                  f"before {old_key} {[round(t, 1) for t in timings[old_key]]} us ({time.time() - began:.0f} s)",
                  flush=True)  # fmt: skip
    result["kernel_configs"] = {
        str(dim): {str(rows): key for rows, key in by_rows.items()} for dim, by_rows in table.items()
    }
    result["seconds"] = time.time() - began
    write_json(args.out, result)


if __name__ == "__main__":
    main()
