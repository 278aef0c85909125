"""Where a decode step's time goes, per method: the eval's own step clock (draft / verify / other ms)
beside the bare forward of the same bucket, and torch.profiler's kernels and host ops over a whole
generation, so a verify that costs more than its forward shows what the difference is.

    python3 bench/profile_step.py --model qwen2.5-coder-1.5b --methods ar,pld,recycle --out $OUT/step.json
    python3 bench/profile_step.py --model tiny-random --device cpu --methods ar,pld --out /tmp/step.json

Each method drafts through the product's registry on the product's engine (`--engine auto`: compiled
on CUDA), after one untimed generation and `prepare_seen`, as `specbench eval` runs it. One prompt
(--prompt, a coding question by default, in the chat template), greedy. Per method the JSON holds the
step clock's means and the number of steps, the probe's forward time of the buckets the verify steps
used (engine/costs.py, weighted by how often each was used), and two tables of the profiled
generation: device kernels (GPU) and host ops by self CPU time, each per step, with counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profile_forward import kernel_table  # noqa: E402

PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring and tests."


def profile_method(engine: Any, drafter: Any, ids: list[int], max_new: int, top: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from specbench_cli.engine.costs import time_forwards
    from specbench_cli.engine.decode import generate

    cuda = engine.runner.device.type == "cuda"
    generate(engine, drafter, ids, min(32, max_new))  # warm-up, as eval's
    for _, runner in engine.runners.made:
        runner.prepare_seen()
    gen = generate(engine, drafter, ids, max_new)
    steps = gen.steps[1:]  # the prefill step is not a decode step
    n = max(len(steps), 1)
    # The input count each verify forward ran at: its bucket on the compiled runner, as it was eager.
    sizes = getattr(engine.runner, "buckets", [])
    buckets = Counter(next((b for b in sizes if b > s.draft_nodes), s.draft_nodes + 1) for s in steps)
    probe = time_forwards(engine.runner, sorted(buckets), ids, 5)  # milliseconds
    forward_ms = sum(probe[str(b)] * c for b, c in buckets.items()) / n
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        profiled = generate(engine, drafter, ids, max_new)
        if cuda:
            torch.cuda.synchronize()
    per = max(len(profiled.steps) - 1, 1)
    return {
        "steps": len(steps),
        "new_tokens": len(gen.output_ids),
        "mean_accepted_length": len(gen.output_ids) / max(len(gen.steps), 1),
        "mean_draft_nodes": sum(s.draft_nodes for s in steps) / n,
        "t_draft_ms": sum(s.t_draft for s in steps) / n * 1e3,
        "t_verify_ms": sum(s.t_verify for s in steps) / n * 1e3,
        "t_other_ms": sum(s.t_other for s in steps) / n * 1e3,
        "forward_ms_of_the_buckets_used": forward_ms,
        "buckets_used": {str(b): c for b, c in sorted(buckets.items())},
        "kernels_per_step": kernel_table(prof, per, True, top) if cuda else None,
        "host_ops_per_step": kernel_table(prof, per, False, top),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--methods", default="ar,pld,recycle")
    parser.add_argument("--datastore", action="append", default=[], help="a store folder, for rest/dresd/sam")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", default="auto", help="auto, compiled or eager")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    args = parser.parse_args(argv)

    from specbench_cli.engine.decode import DEFAULT_MAX_NODES, Engine
    from specbench_cli.env import collect_env
    from specbench_cli.evaluate import datastores_by_method, resolve_device, resolve_engine
    from specbench_cli.models import load_model
    from specbench_cli.prompts import build_prompt_ids
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.types import MethodSetup

    device, dtype = resolve_device(args.device, "auto")
    loaded = load_model(args.model, dtype, device)
    kind, reason = resolve_engine(args.engine, device, [loaded])
    ids = build_prompt_ids(loaded.tokenizer, [args.prompt], [])
    max_len = len(ids) + args.max_new_tokens + DEFAULT_MAX_NODES + 2
    engine = Engine(loaded, max_len=max_len, kind=kind)
    stores = datastores_by_method([Path(p) for p in args.datastore])
    result: dict[str, Any] = {
        "study": "profile_step",
        "model": args.model,
        "engine": kind,
        "engine_reason": reason,
        "prompt_tokens": len(ids),
        "max_new_tokens": args.max_new_tokens,
        "env": collect_env([loaded], [], {}, dtype, device),
        "methods": {},
    }
    for name in args.methods.split(","):
        setup = MethodSetup(target=loaded, datastores=stores, runners=engine.runners)
        drafter = DRAFTERS.get(name)(setup)
        row = profile_method(engine, drafter, ids, args.max_new_tokens, args.top)
        result["methods"][name] = row
        print(
            f"{name}: {row['steps']} steps, MAT {row['mean_accepted_length']:.2f}, draft / verify / other "
            f"{row['t_draft_ms']:.3f} / {row['t_verify_ms']:.3f} / {row['t_other_ms']:.3f} ms; "
            f"forward of the buckets used {row['forward_ms_of_the_buckets_used']:.3f} ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
