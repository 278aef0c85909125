"""The parts of a decode step that are not the model's forward, timed one by one on the product's runner.

    python3 bench/step_parts.py --out $OUT/step_parts.json                       # H200: ~1 min, no model files
    python3 bench/step_parts.py --device cpu --shape tiny --out /tmp/parts.json  # smoke run

On the 2026-12-03 H200 runs a tree step's verification cost ~0.5 ms more than the probe's forward of
its bucket, and tree steps spent 0.35-0.45 ms in `t_other` against 0.08 ms for chains. This study
separates the candidates on a random-weight model of the real shape (bench/shapes.py; the costs do not
depend on the weights), on the compiled runner `eval` uses, at a 512-token context:

- `forward`: `runner.forward` of a chain of N inputs (what engine/costs.py probes), and of a tree of N
  inputs shaped like Token Recycling's (the paper's template cut to N - 1 nodes);
- `choose`: the same forward plus the verifier's argmax read back to the host (`sample_tokens`), and
  plus the argmax and every row's top-8 (`choices_with_topk`, Token Recycling and SAM's fallback);
  the top-8 alone with torch.topk and with the product's `row_topk` (`node_topk` says whether it took
  the Triton chunked pass; a torch-ops version over chunks of 128 columns was slower than torch.topk
  on the 2026-12-03 H200 run, 0.67 vs 0.20 ms at 64 rows);
- `commit`: keeping a tree's accepted path of depth 4 (a K/V move) with the compaction the runner
  installed (`kv_compaction`) and with the per-layer torch ops, each from its captured graph.

Wall times with the device synchronised, median of --reps, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shapes import device_info, random_loaded, resolve_device, sync, write_json  # noqa: E402

SIZES = "1,16,64,81,96"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--shape", default="qwen2.5-coder-1.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--sizes", default=SIZES, help="inputs per forward (root included)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--reps", type=int, default=50)
    return p.parse_args(argv)


def median_ms(fn, device: str, reps: int) -> float:
    fn()  # a first call outside the timing (bucket capture, Triton build)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return round(1000.0 * statistics.median(times), 4)


def recycle_parents(n_nodes: int) -> list[int]:
    """Input parents of [root] + n_nodes nodes: Token Recycling's paper template (80 nodes) cut to
    n_nodes, continued as a chain below its last node when n_nodes is larger."""
    from specbench_cli.drafters.recycle import PAPER_TEMPLATE, Template
    from specbench_cli.types import DraftTree

    parents = Template.from_paths(PAPER_TEMPLATE, 8).parents.tolist()[:n_nodes]
    parents += list(range(len(parents) - 1, n_nodes - 1))
    return DraftTree(tuple([0] * n_nodes), tuple(parents)).input_parents()


def move_times(runner: Any, device: str, reps: int) -> dict[str, Any]:
    """One compaction of the largest move size, per-layer torch ops against the fused kernels, each
    replayed from its own CUDA graph on a GPU (as the runner replays its move), eager elsewhere."""
    import torch

    from specbench_cli.engine.compaction import FusedMove, torch_move

    tensors, rows, base = runner.cache.tensors(), runner.buckets[-1], runner.max_len
    kept = torch.arange(0, rows, 2, device=runner.device)
    # Inside the spare slots past max_len, where nothing live is stored.
    src = torch.full((rows,), base, dtype=torch.long, device=runner.device)
    dst = src.clone()
    src[: len(kept)] = base + kept
    dst[: len(kept)] = base + torch.arange(len(kept), device=runner.device)
    movers = {"per_layer": lambda: torch_move(tensors, src, dst)}
    if runner.cache.fused is not None:
        fused = FusedMove(tensors, rows)
        movers["fused"] = lambda: fused(src, dst)
    out: dict[str, Any] = {"rows": rows, "tensors": len(tensors)}
    if "fused" in movers:  # the same move both ways on copies of the spare slots: identical bits
        before = [t[:, :, base:].clone() for t in tensors]
        movers["fused"]()
        fused_result = [t[:, :, base:].clone() for t in tensors]
        for t, b in zip(tensors, before):
            t[:, :, base:] = b
        movers["per_layer"]()
        out["fused_equals_per_layer"] = all(
            torch.equal(a, t[:, :, base:]) for a, t in zip(fused_result, tensors)
        )
    for name, move in movers.items():
        call = move
        if runner.use_graphs:
            move()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                move()
            call = graph.replay
        out[f"{name}_ms"] = median_ms(call, device, reps)
    return out


def size_row(runner: Any, n: int, context: list[int], device: str, reps: int) -> dict[str, Any]:
    """The forward of n inputs (chain and tree), with the verifier's reads, and a commit that moves."""
    from specbench_cli.engine.row_topk import row_topk
    from specbench_cli.engine.verifier import choices_with_topk, sample_tokens

    tokens, tree = context[:n], recycle_parents(n - 1)

    def at_context() -> None:
        runner.length = len(context)  # the prefix's K/V values do not matter for timing
        runner.cache.slots.length = runner.length

    def chain():
        at_context()
        return runner.forward(tokens)[0]

    def treed():
        at_context()
        return runner.forward(tokens, tree)[0]

    def commit():  # an accepted path of depth 4 that is not a prefix of the inputs: a move
        treed()
        runner.commit([0, 1, 2, 3, n - 1])

    row: dict[str, Any] = {"inputs": n}
    row["forward_chain_ms"] = median_ms(chain, device, reps)
    row["forward_tree_ms"] = median_ms(treed, device, reps)
    row["tree_and_argmax_ms"] = median_ms(lambda: sample_tokens(treed(), 0.0, None), device, reps)
    row["tree_and_top8_ms"] = median_ms(lambda: choices_with_topk(treed(), 8, 0.0, None), device, reps)
    logits = treed()
    row["top8_ms"] = median_ms(lambda: logits.topk(8, dim=-1).indices, device, reps)
    row["top8_row_topk_ms"] = median_ms(lambda: row_topk(logits, 8), device, reps)
    if n > 4:
        row["tree_and_commit_ms"] = median_ms(commit, device, reps)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    from specbench_cli.engine.compiled import CompiledRunner
    from specbench_cli.engine.row_topk import topk_kind

    device = resolve_device(args.device)
    loaded = random_loaded(args.shape, args.dtype, device)
    sizes = [int(s) for s in args.sizes.split(",")]
    # The target's runner as the engine makes it (logits in the model's dtype).
    runner = CompiledRunner(
        loaded.model, args.context + 256, max(sizes) - 1 if max(sizes) > 1 else 1, float_logits=False
    )
    context = [(7 * i) % 1000 + 1 for i in range(args.context)]

    runner.forward(context[:16])  # allocate, compile the first variant
    with torch.inference_mode():
        rows = [size_row(runner, n, context, device, args.reps) for n in sizes]
        move = move_times(runner, device, args.reps)
    result = {
        "study": "step_parts",
        "machine": device_info(),
        "shape": args.shape,
        "weights": "random (the real shape's cost per forward)",
        "dtype": args.dtype,
        "context": args.context,
        "reps": args.reps,
        "graphs": runner.use_graphs,
        "kv_compaction": runner.move_kind,
        "node_topk": topk_kind(runner.device, runner.dtype),
        "compile_error": runner.compile_error,
        "rows": rows,
        "move": move,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    for row in rows:
        print(row)
    return result


if __name__ == "__main__":
    main()
