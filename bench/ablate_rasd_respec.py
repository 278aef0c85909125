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

What is varied (defaults in docs/methods.md):
- rasd: prune_min_prob 0 (default: the budget ranking alone) / 0.001 / 0.01 / 0.1, node budget 64 /
  80 / 128, against the host tree (`sps-tree`) alone;
- respec, relaxed off (lossless, speed only): the trigger (theta 1.5 vs always retrieve), lambda_e
  0.5 / 1 / 2, one candidate vs four, no score cut-off, no strict draft-model siblings;
- respec, relaxed on: (relaxed_topk, relaxed_min_prob) = (1, 0.3) default, (2, 0.3), (0, 0.1), (5, 0.1).

`--replay` instead replays ReSpec's retrieval policies (trigger, candidate choice, relaxed rule at the
first divergence) on `ar`'s own output, which needs only the target: see `run_replay`.
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
    ("rasd prune=0.001", "rasd", {"prune_min_prob": 0.001}),
    ("rasd prune=0.01", "rasd", {"prune_min_prob": 0.01}),
    ("rasd prune=0.1", "rasd", {"prune_min_prob": 0.1}),
    ("rasd budget=128", "rasd", {"budget": 128}),
    ("rasd budget=64", "rasd", {"budget": 64}),
    ("respec off", "respec", {"relaxed": False}),
    ("respec off always", "respec", {"relaxed": False, "entropy_theta": 1e9}),
    ("respec off lambda=0.5", "respec", {"relaxed": False, "lambda_e": 0.5}),
    ("respec off lambda=2", "respec", {"relaxed": False, "lambda_e": 2.0}),
    ("respec off cands=1", "respec", {"relaxed": False, "num_candidates": 1}),
    ("respec off cutoff=0", "respec", {"relaxed": False, "score_cutoff": 0.0}),
    ("respec off fallback=0", "respec", {"relaxed": False, "fallback_k": 0}),
    ("respec", "respec", {}),
    ("respec top2 p0.3", "respec", {"relaxed_topk": 2, "relaxed_min_prob": 0.3}),
    ("respec top0 p0.1", "respec", {"relaxed_topk": 0, "relaxed_min_prob": 0.1}),
    ("respec top5 p0.1", "respec", {"relaxed_topk": 5, "relaxed_min_prob": 0.1}),
]


def load_prompts(args, tokenizer):
    """[(suite, Question, prompt ids)], HumanEval first."""
    from specbench_cli.prompts import build_prompt_ids
    from specbench_cli.suites import load_suite

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
    ap.add_argument("--replay", action="store_true", help="replay ReSpec's retrieval policies on ar's output")
    args = ap.parse_args()
    if args.replay:
        run_replay(args)
        return

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
            "draft_model": draft.name,
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
            "stats": drafter.stats(),
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


# ----------------------------------------------------------------------------------------------------
# Replay: ReSpec's retrieval decisions on real text, from one `ar` pass of the target (no draft model)
#
# Under lossless verification the output is `ar`'s, so a retrieved candidate verified at root position i
# accepts exactly its common prefix with ar's output after i. One greedy pass that keeps the target's
# distribution at every position therefore replays any retrieval policy exactly: which steps trigger,
# which candidates are chosen, what they accept, how the feedback scores move. Steps that do not
# retrieve advance one token here (the model tree's share is not replayed). For relaxed verification
# the replay sees the first divergence only: whether the first retrieved token that differs from ar's
# would pass the relaxed rule (each such pass changes the output from there on).

TRIGGERS = {
    "always": None,
    "theta=1.5 lambda=1": (1.5, 1.0),
    "theta=1.5 lambda=0.5": (1.5, 0.5),
    "theta=1.5 lambda=2": (1.5, 2.0),
    "theta=0.75 lambda=1": (0.75, 1.0),
    "theta=3 lambda=1": (3.0, 1.0),
}
SELECTIONS = {  # name: (candidates verified, ranked by feedback)
    "first match only (PLD)": (1, False),
    "ranked top-1": (1, True),
    "unranked top-4": (4, False),
    "ranked top-4": (4, True),
    "ranked top-8": (8, True),
}
RELAXED = [(2, 0.3), (0, 0.3), (0, 0.1), (5, 0.1), (2, 1.1), (1, 0.5)]


class Recorder:
    """`ar` that keeps the target's distribution over every output position (the engine's ctx.logits)."""

    name = "ar-recorder"
    needs_hidden_states = False
    needs_logits = True
    lossless = True

    def __init__(self):
        self.rows = []

    def reset(self, prompt_ids):
        self.rows = []

    def propose(self, ctx):
        import torch

        from specbench_cli.types import DraftTree

        self.rows.append(torch.softmax(ctx.logits.float(), -1).to(torch.float16).cpu())
        return DraftTree.empty()

    def update(self, feedback):
        pass

    def verify_options(self):
        return {}


def replay_policy(prompt, out, probs, entropies, trigger, selection, alpha=0.3, init=0.5, cutoff=0.5) -> dict:
    import numpy as np

    from specbench_cli.drafters.respec import common_prefix_len, entropy_trigger, rank_candidates
    from specbench_cli.drafters.retrieval import Candidate, context_candidates
    from specbench_cli.types import DraftTree

    limit, ranked = selection
    scores: dict = {}
    hist: list[float] = []
    i = steps = retrieval_steps = retrieved_tokens = zero = nodes = 0
    fires = {f"top{k} p{p}": 0 for k, p in RELAXED}
    while i < len(out) - 1 and i < len(entropies):
        steps += 1
        hist = (hist + [entropies[i]])[-3:]
        acc = 0
        if trigger is None or entropy_trigger(hist, 3, trigger[1], trigger[0]):
            toks = np.asarray(prompt + out[: i + 1], dtype=np.int64)
            cands = [
                Candidate(c, "pld", ("pld", len(toks) - s)) for s, c in context_candidates(toks, 3, 10, 8)
            ]
            if ranked:
                chosen = rank_candidates(cands, scores, init, cutoff, limit)
            else:
                chosen = cands[:limit]
            if chosen:
                truth = out[i + 1 :]
                accs = [common_prefix_len(c.tokens, truth) for c in chosen]
                acc = max(accs)
                retrieval_steps += 1
                retrieved_tokens += acc
                zero += acc == 0
                nodes += len(DraftTree.from_paths([list(c.tokens) for c in chosen]))
                pos = i + 1 + acc  # output position of the first retrieved token that differs from ar's
                if pos < len(probs):
                    row = probs[pos].float()
                    diverging = {c.tokens[a] for c, a in zip(chosen, accs) if a == acc and a < len(c.tokens)}
                    for k, p in RELAXED:
                        top = set(row.topk(k).indices.tolist()) if k else set()
                        if any(t in top or float(row[t]) >= p for t in diverging):
                            fires[f"top{k} p{p}"] += 1
                if ranked:
                    accepted = list(truth[:acc])
                    for c in chosen:
                        r = common_prefix_len(c.tokens, accepted) / len(c.tokens)
                        scores[c.key] = (1 - alpha) * scores.get(c.key, init) + alpha * r
        i += acc + 1
    return {
        "steps": steps,
        "retrieval_steps": retrieval_steps,
        "retrieved_tokens": retrieved_tokens,
        "zero_accept_steps": zero,
        "verified_nodes": nodes,
        "relaxed_fires": fires,
    }


def run_replay(args) -> None:
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.env import collect_env
    from specbench_cli.models import load_model

    target = load_model(args.model, dtype=args.dtype, device=args.device)
    prompts = load_prompts(args, target.tokenizer)
    engine = Engine(target, max_len=4096)
    rec = Recorder()
    runs = []
    for suite, q, ids in prompts:
        gen = generate(engine, rec, ids, args.max_new_tokens)
        probs = rec.rows  # probs[j]: the distribution that chose output token j
        ent = [float(-(p.float() * p.float().clamp_min(1e-30).log()).sum()) for p in probs]
        runs.append((suite, q, ids, gen.output_ids, probs, ent))
        print(
            f"{suite}:{q.question_id}: {gen.new_tokens} tokens, mean entropy {sum(ent) / max(len(ent), 1):.2f}",
            flush=True,
        )
    result = {
        "setup": {
            "mode": "replay",
            "model": args.model,
            "prompts": [f"{s}:{q.question_id}" for s, q, *_ in runs],
            "max_new_tokens": args.max_new_tokens,
            "env": collect_env([target], [], {"seed": 0}, args.dtype, args.device),
            "entropy_mean": sum(sum(r[5]) for r in runs) / max(sum(len(r[5]) for r in runs), 1),
            "entropy_share_below_1.5": sum(e <= 1.5 for r in runs for e in r[5])
            / max(sum(len(r[5]) for r in runs), 1),
        },
        "policies": [],
    }
    for trig_name, trig in TRIGGERS.items():
        for sel_name, sel in SELECTIONS.items():
            if trig_name != "theta=1.5 lambda=1" and sel_name != "ranked top-4":
                continue  # one axis at a time around the defaults
            total: dict = {}
            tokens = 0
            for _, _, ids, out, probs, ent in runs:
                r = replay_policy(ids, out, probs, ent, trig, sel)
                tokens += len(out)
                for key, value in r.items():
                    if isinstance(value, dict):
                        sub = total.setdefault(key, {})
                        for k2, v2 in value.items():
                            sub[k2] = sub.get(k2, 0) + v2
                    else:
                        total[key] = total.get(key, 0) + value
            rs = max(total["retrieval_steps"], 1)
            row = {
                "trigger": trig_name,
                "selection": sel_name,
                **total,
                "output_tokens": tokens,
                "retrieval_step_share": total["retrieval_steps"] / max(total["steps"], 1),
                "accepted_per_retrieval_step": total["retrieved_tokens"] / rs,
                "zero_accept_share": total["zero_accept_steps"] / rs,
                "nodes_per_retrieval_step": total["verified_nodes"] / rs,
                "relaxed_fire_share": {k: v / rs for k, v in total["relaxed_fires"].items()},
            }
            result["policies"].append(row)
            print(
                f"{trig_name:22s} {sel_name:24s} retrieval {row['retrieval_step_share']:.2f} of steps, "
                f"{row['accepted_per_retrieval_step']:.2f} tok/step, zero {row['zero_accept_share']:.2f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
