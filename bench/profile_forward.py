"""Where a target forward's time goes: per bucket size, the forward time and the top kernels by total
device time (GPU kernels on CUDA, aten ops by self CPU time on the CPU), with their counts.

    python3 bench/profile_forward.py --out $OUT/profile.json --shape qwen2.5-coder-1.5b,smollm2-135m
    python3 bench/profile_forward.py --out $OUT/profile.json --model /root/m/q15/hf     # a real model folder
    python3 bench/profile_forward.py --out /tmp/p.json --shape tiny --device cpu --runner eager
    python3 bench/profile_forward.py --out after.json ... --compare before.json     # per-kernel before/after

Each forward is the product's runner (`CompiledRunner` per --variants, or the eager `ModelRunner`)
over a chain of SIZE inputs after --context committed slots, as a decode step with a draft of SIZE - 1
tokens runs it. Kernel names are cut at 120 characters and counts and times are per forward, so two
files from before and after a change line up name by name (--compare prints that).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from shapes import device_info, make_runner, random_loaded, resolve_device, sync, time_forward, write_json

NAME_CHARS = 120


def kernel_table(prof: Any, forwards: int, cuda: bool, top: int) -> dict[str, Any]:
    """Per forward: kernel count, total kernel ms, and the `top` kernels by total time with counts."""
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        if cuda and e.device_type.name == "CUDA":
            us = e.time_range.elapsed_us()  # kernels do not nest: their own durations add up
        elif not cuda and e.device_type.name == "CPU":
            us = e.self_cpu_time_total  # ops nest on the CPU: self time only, or children count twice
        else:
            continue
        by_name.setdefault(e.name[:NAME_CHARS], []).append(us)
    total = sum(sum(v) for v in by_name.values())
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "kernels_per_forward": round(sum(len(v) for v in by_name.values()) / forwards, 1),
        "kernel_ms_per_forward": round(total / forwards / 1000, 4),
        "top": [
            {
                "name": name,
                "count": round(len(times) / forwards, 2),
                "total_us": round(sum(times) / forwards, 2),
                "share": round(sum(times) / total, 4) if total else 0.0,
            }
            for name, times in rows
        ],
    }


def profile_size(runner: Any, size: int, args: argparse.Namespace, device: str) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    entry: dict[str, Any] = {"forward_ms": time_forward(runner, size, args.context, args.reps, device)}
    runner.reset()
    runner.length = args.context
    tokens, parents = list(range(size)), [-1] + list(range(size - 1))
    runner.forward(tokens, parents, copy=False)  # warm, outside the profile (uncopied, as time_forward)
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile_reps):
            runner.forward(tokens, parents, copy=False)
        sync(device)
    runner.reset()
    return entry | kernel_table(prof, args.profile_reps, cuda, args.top)


def graph_node_cost() -> float:
    """Microseconds per node of a CUDA graph of 1000 one-element adds: the floor of a kernel's cost."""
    import torch

    x = torch.zeros(1, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(1000):
            x.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(10):
        graph.replay()
    end.record()
    end.synchronize()
    return round(begin.elapsed_time(end) * 1000 / 10000, 3)


def compare(before: dict, after: dict) -> list[str]:
    """Lines of per-kernel us per forward, before -> after, for every model/variant/size in both."""
    lines = []
    for label, variants in after.get("models", {}).items():
        for variant, entry in variants.items():
            old = before.get("models", {}).get(label, {}).get(variant, {}).get("sizes", {})
            for size, new in entry.get("sizes", {}).items():
                if size not in old or "top" not in old[size] or "top" not in new:
                    continue
                lines.append(
                    f"{label} {variant} size {size}: forward {old[size]['forward_ms']} -> {new['forward_ms']} ms, "
                    f"{old[size]['kernels_per_forward']} -> {new['kernels_per_forward']} kernels"
                )
                a = {r["name"]: r for r in old[size]["top"]}
                b = {r["name"]: r for r in new["top"]}
                for name in dict.fromkeys([*b, *a]):
                    us = [
                        f"{r['total_us']:9.1f} us {r['count']:6.1f}x" if r else f"{'-':>20}"
                        for r in (a.get(name), b.get(name))
                    ]
                    lines.append(f"    {us[0]}  ->  {us[1]}  {name}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shape", default=None, help="comma list of random-weight shapes (bench/shapes.py)")
    parser.add_argument(
        "--model", default=None, help="a real model: alias, folder or .gguf (specbench's loader)"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument(
        "--variants", default="tree:efficient:default,tree:efficient:eager",
        help="compiled runner ATTENTION:BACKEND:COMPILE_MODE list, or 'eager' for the eager ModelRunner",
    )  # fmt: skip
    parser.add_argument("--sizes", default="1,16", help="inputs per forward (root + draft nodes)")
    parser.add_argument("--context", type=int, default=1000, help="committed slots before the forward")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=20, help="timed forwards per size")
    parser.add_argument("--profile-reps", type=int, default=5, help="profiled forwards per size")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per size")
    parser.add_argument("--compare", type=Path, default=None, help="an earlier output: print before -> after")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args(argv)
    if not args.shape and not args.model:
        args.shape = "smollm2-135m,qwen2.5-coder-1.5b"

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # a busy 2-core box stalls 2-thread forwards at OpenMP barriers
    device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    if device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)  # as micro.py: the eager paths' setting
    report: dict[str, Any] = {
        "machine": device_info(),
        "device": device,
        "dtype": dtype,
        "context": args.context,
        "models": {},
    }
    if device.startswith("cuda"):
        report["graph_us_per_tiny_kernel"] = graph_node_cost()
    models = [(f"random:{s}", s) for s in (args.shape.split(",") if args.shape else [])]
    models += [(args.model, None)] if args.model else []
    sizes = [int(v) for v in args.sizes.split(",")]
    for label, shape in models:
        if shape is not None:
            loaded = random_loaded(shape, dtype, device)
        else:
            from specbench_cli.models import load_model

            loaded = load_model(args.model, dtype=dtype, device=device)
        entries: dict[str, Any] = {}
        report["models"][label] = entries
        for variant in args.variants.split(","):
            try:
                start = time.perf_counter()
                runner = make_runner(loaded, variant, args.max_len)
                if hasattr(runner, "prepare"):  # capture (and compile) the buckets these sizes use
                    runner.prepare(sorted({next(b for b in runner.buckets if b >= s) for s in sizes}))
                entry: dict[str, Any] = {"setup_s": round(time.perf_counter() - start, 2), "sizes": {}}
                for size in sizes:
                    entry["sizes"][str(size)] = profile_size(runner, size, args, device)
                    row = entry["sizes"][str(size)]
                    print(
                        f"{label} {variant} size {size}: {row['forward_ms']} ms, {row['kernels_per_forward']} "
                        f"kernels, {row['kernel_ms_per_forward']} ms kernel time",
                        flush=True,
                    )
                    for k in row["top"]:
                        print(f"    {k['total_us']:9.1f} us {k['count']:6.1f}x {k['name']}", flush=True)
                entries[variant] = entry
                del runner
            except Exception as err:  # one broken variant must not sink the others
                entries[variant] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
                print(label, variant, entries[variant], flush=True)
            write_json(args.out, report)
        del loaded
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.compare is not None:
        print("\n".join(compare(json.loads(args.compare.read_text()), report)))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
