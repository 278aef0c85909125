"""Ablation of the values we chose for `rasd` and `respec` (the papers do not give them; docs/methods.md).

    python3 bench/ablate_rasd_respec.py                                   # tiny models, CPU smoke run
    python3 bench/ablate_rasd_respec.py --model qwen2.5-coder-1.5b --draft-model qwen2.5-coder-0.5b \
        --device cuda --humaneval 6 --spec-bench 6 --max-new-tokens 96

Writes bench/results/ablate_rasd_respec.json (rewritten after every configuration, so a cut-off run
keeps what it finished). Every configuration answers the same prompts (the first turn of N HumanEval
and N Spec-Bench questions, round-robin over categories) on one engine, greedy; `ar` first gives the
reference outputs. Per configuration: mean accepted length (tokens per target forward, prefill
included, as the report counts it), acceptance rate, tokens/s, draft and verify milliseconds per
step, the share of prompts whose output equals `ar`'s, token agreement with `ar`, HumanEval pass@1
next to `ar`'s, ROUGE-L against `ar` on Spec-Bench, and the drafter's own counters.

What is varied (defaults marked in docs/methods.md):
- rasd: prune_min_prob 0 (no pruning) / 0.001 / 0.01 / 0.1, node budget 80 / 128, against the host
  tree (`sps-tree`) alone;
- respec, relaxed off (lossless, speed only): the trigger (theta 1.5 vs always retrieve), lambda_e
  0.5 / 1 / 2, one candidate vs four;
- respec, relaxed on: (relaxed_topk, relaxed_min_prob) in (2, 0.3), (0, 0.3), (5, 0.1), (2, off).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"

CONFIGS: list[tuple[str, str, dict]] = [
    ("pld", "pld", {}),
    ("sps-tree", "sps-tree", {}),
    ("rasd", "rasd", {}),
    ("rasd prune=0", "rasd", {"prune_min_prob": 0.0}),
    ("rasd prune=0.001", "rasd", {"prune_min_prob": 0.001}),
    ("rasd prune=0.1", "rasd", {"prune_min_prob": 0.1}),
    ("rasd budget=128", "rasd", {"budget": 128}),
    ("respec off", "respec", {"relaxed": False}),
    ("respec off always", "respec", {"relaxed": False, "entropy_theta": 1e9}),
    ("respec off lambda=0.5", "respec", {"relaxed": False, "lambda_e": 0.5}),
    ("respec off lambda=2", "respec", {"relaxed": False, "lambda_e": 2.0}),
    ("respec off cands=1", "respec", {"relaxed": False, "num_candidates": 1}),
    ("respec", "respec", {}),
    ("respec top0 p0.3", "respec", {"relaxed_topk": 0, "relaxed_min_prob": 0.3}),
    ("respec top5 p0.1", "respec", {"relaxed_topk": 5, "relaxed_min_prob": 0.1}),
    ("respec top2 pOff", "respec", {"relaxed_topk": 2, "relaxed_min_prob": 1.1}),
]


def load_prompts(args, tokenizer):
    """[(suite, Question, prompt ids)], HumanEval first."""
    from specbench_cli.suites import build_prompt_ids, load_suite

    out = []
    for suite, spec, n in (
        ("humaneval", args.humaneval_spec, args.humaneval),
        ("spec-bench", args.spec_bench_spec, args.spec_bench),
    ):
        if n <= 0:
            continue
        for q in load_suite(spec, n, 0).questions:
            out.append((suite, q, build_prompt_ids(tokenizer, [q.turns[0]], [])))
    return out


def run_config(engine, drafter, prompts, max_new: int) -> tuple[list, dict]:
    from specbench_cli.engine.decode import generate

    generate(engine, drafter, prompts[0][2], min(16, max_new))  # warm-up: kernels, allocator, caches
    gens = [generate(engine, drafter, ids, max_new) for _, _, ids in prompts]
    steps = [s for g in gens for s in g.steps]
    drafted = sum(s.draft_nodes for s in steps)
    new = sum(g.new_tokens for g in gens)
    timed = [s for s in steps[1:]] or steps
    summary = {
        "new_tokens": new,
        "steps": len(steps),
        "mean_accepted_length": new / max(len(steps), 1),
        "acceptance_rate": (sum(s.accepted for s in steps) / drafted) if drafted else math.nan,
        "draft_nodes_per_step": drafted / max(len(steps), 1),
        "tokens_per_s": new / max(sum(g.wall_time for g in gens), 1e-9),
        "t_draft_ms": 1e3 * sum(s.t_draft for s in timed) / len(timed),
        "t_verify_ms": 1e3 * sum(s.t_verify for s in timed) / len(timed),
    }
    return gens, summary


def quality(prompts, gens, ref_gens, tokenizer, ar_pass: float | None) -> dict:
    from specbench_cli.quality import humaneval_pass_at_1, rouge_l, token_agreement

    same, agree, rouge, records, questions = [], [], [], [], []
    for (suite, q, _), g, r in zip(prompts, gens, ref_gens):
        same.append(float(g.output_ids == r.output_ids))
        agree.append(token_agreement(g.output_ids, r.output_ids))
        text = tokenizer.decode(g.output_ids, skip_special_tokens=True)
        if suite == "humaneval":
            records.append({"question_id": q.question_id, "choices": [{"turns": [text]}]})
            questions.append(q)
        else:
            rouge.append(rouge_l(text, tokenizer.decode(r.output_ids, skip_special_tokens=True)))
    out = {
        "same_as_ar": sum(same) / len(same),
        "token_agreement": sum(agree) / len(agree),
        "rouge_l_vs_ar": sum(rouge) / len(rouge) if rouge else math.nan,
    }
    if records:
        he = humaneval_pass_at_1(records, questions)
        out |= {"humaneval_pass_at_1": he["pass_at_1"], "humaneval_results": he["results"]}
    if ar_pass is not None:
        out["humaneval_pass_at_1_ar"] = ar_pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--draft-model", default="tiny-random-draft")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--humaneval", type=int, default=2)
    ap.add_argument("--spec-bench", type=int, default=2)
    ap.add_argument("--humaneval-spec", default="humaneval")
    ap.add_argument("--spec-bench-spec", default="spec-bench")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--configs", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS / "ablate_rasd_respec.json")
    args = ap.parse_args()

    import torch

    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine
    from specbench_cli.env import collect_env
    from specbench_cli.models import load_model
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.types import MethodSetup

    if args.device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)  # per-call plan building costs ms (notes/gpu.md)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    target = load_model(args.model, dtype=args.dtype, device=args.device)
    draft = load_model(args.draft_model, dtype=args.dtype, device=args.device)
    prompts = load_prompts(args, target.tokenizer)
    engine = Engine(target, max_len=4096)
    wanted = [c for c in args.configs.split(",") if c]
    configs = [c for c in CONFIGS if not wanted or c[0] in wanted]
    result = {
        "setup": {
            "model": args.model,
            "draft_model": args.draft_model,
            "device": args.device,
            "dtype": args.dtype,
            "prompts": [f"{s}:{q.question_id}" for s, q, _ in prompts],
            "max_new_tokens": args.max_new_tokens,
            "load_seconds": time.perf_counter() - t0,
            "env": collect_env([target, draft], [], {"seed": 0}, args.dtype, args.device),
        },
        "configs": [],
    }

    ref_gens, ar_summary = run_config(
        engine, Autoregressive(MethodSetup(target=target)), prompts, args.max_new_tokens
    )
    ar_q = quality(prompts, ref_gens, ref_gens, target.tokenizer, None)
    ar_pass = ar_q.get("humaneval_pass_at_1")
    result["configs"].append({"label": "ar", "method": "ar", "options": {}, **ar_summary, **ar_q})
    print(f"ar: {ar_summary['tokens_per_s']:.1f} tok/s, pass@1 {ar_pass}", flush=True)
    for label, method, options in configs:
        cls = DRAFTERS.get(method)
        setup = MethodSetup(
            target=target, draft=draft if cls.needs_draft_model else None, options=dict(options)
        )
        drafter = cls(setup)
        gens, summary = run_config(engine, drafter, prompts, args.max_new_tokens)
        row = {
            "label": label,
            "method": method,
            "options": options,
            "lossless_method": bool(getattr(drafter, "lossless", True)),
            **summary,
            "speedup_vs_ar": summary["tokens_per_s"] / ar_summary["tokens_per_s"],
            **quality(prompts, gens, ref_gens, target.tokenizer, ar_pass),
            "stats": getattr(drafter, "stats", {}),
        }
        result["configs"].append(row)
        print(
            f"{label}: MAT {row['mean_accepted_length']:.2f}, {row['tokens_per_s']:.1f} tok/s, "
            f"same {row['same_as_ar']:.2f}, pass@1 {row.get('humaneval_pass_at_1')}, stats {row['stats']}",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
