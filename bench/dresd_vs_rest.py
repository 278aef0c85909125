"""DReSD against REST (and PLD, AR) on datastores built from the same corpus, DReSD-paper style.

    python3 bench/dresd_vs_rest.py --threads 1                       # CPU: smollm2-135m, small
    # GPU (device auto = cuda, bfloat16), in two commands that each fit a 10-minute slot; a cut
    # build resumes from its cached answers:
    python3 bench/dresd_vs_rest.py --model qwen2.5-coder-1.5b --corpus-docs 2000 --batch-size 64 \\
        --work .stage/dresd-qwen --stage build
    python3 bench/dresd_vs_rest.py --model qwen2.5-coder-1.5b --corpus-docs 2000 --limit 30 \\
        --work .stage/dresd-qwen --stage eval

The corpus is DReSD's "ID" (aligned) datastore: the target's own greedy answers to the prompts of
new_codealpaca.json (`generate:`, cached as JSONL and shared by both builds). REST indexes the answers
as text; DReSD runs the target over chat prompt + answer and keys every position by its final hidden
state. Both are evaluated, with `ar` and `pld`, on CodeAlpaca-2k questions (disjoint from the corpus)
and MT-Bench first turns (out of domain for a code datastore), greedy, one question at a time, every
method in turn on the same engine.

Figures per suite and method (written to bench/results/dresd_vs_rest_<model>_<device>.json):
  acceptance_rate       Σ accepted draft tokens / Σ draft nodes (the report's definition; a tree
                        of many branches scores low by construction)
  accepted_per_depth    Σ accepted / Σ draft depth: DReSD's "acceptance rate" (accepted / drafted
                        length of the verified row), comparable between trees and chains
  mean_accepted_length  Σ new tokens / Σ target forwards (prefill included), the bonus token counted
  tokens_per_s, speedup (vs ar), draft_ms p50 / p99 / mean (retrieval + tree building per step),
  draft_rate            share of steps that proposed anything, lossless (output == ar's)
and for dresd the verified tree size against the tokens the same candidates cost as DReSD's batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
CORPUS_RELATIVE = Path("code_alpaca") / "new_codealpaca.json"
METHODS = ("ar", "pld", "rest", "dresd")
# The paper's abstract: DReSD over REST, averaged over its settings (Llama2-Chat-7B, greedy, 128 tokens).
PAPER_GAINS = {"acceptance_rate": 0.87, "accepted_length": 0.65, "tokens_per_s": 0.19}


def default_corpus() -> Path:
    """new_codealpaca.json from the shared data folder, wherever this checkout sees it."""
    roots = [Path(os.environ["SPECBENCH_DATA"])] if os.environ.get("SPECBENCH_DATA") else []
    roots += [REPO.parent / "shared" / "data", REPO / "shared" / "data", Path("/work/shared/data")]
    for root in roots:
        if (root / CORPUS_RELATIVE).is_file():
            return root / CORPUS_RELATIVE
    sys.exit(f"{CORPUS_RELATIVE} not found under {', '.join(map(str, roots))}; pass --corpus")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", type=Path, default=None, help="JSON prompts answered by the model (generate:)")
    p.add_argument("--corpus-docs", type=int, default=200, help="prompts of the corpus to answer and index")
    p.add_argument("--gen-tokens", type=int, default=128, help="answer length for the corpus (DReSD: 128)")
    p.add_argument("--limit", type=int, default=10, help="questions per suite")
    p.add_argument("--suites", default="code-alpaca,mt-bench")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="prompts per generation batch; packed rows per dense-key forward",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--work", type=Path, default=None, help="datastores + generated answers (default /tmp/...)"
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild datastores found in --work")
    p.add_argument(
        "--stage",
        choices=("all", "build", "eval"),
        default="all",
        help="build: answers + datastores only (resumable: answers are cached per batch); eval: reuse --work",
    )
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


# ----------------------------------------------------------------------------------------------------
# Datastores


def build_stores(args, device: str, dtype: str, console) -> dict[str, Path]:
    from specbench_cli.datastores import build_index
    from specbench_cli.datastores.manifest import read_manifest

    options = {
        "text_key": ["instruction", "input"],
        "max_docs": args.corpus_docs,
        "batch_size": args.batch_size,
        "max_new_tokens": args.gen_tokens,
        "dtype": dtype,
        "device": device,
        "force": True,
        "generated_dir": args.work / "generated",  # one answers file serves both builds
    }
    dresd_opt = {"layer": -1, "dim": 64, "index": "auto", "nprobe": 250}
    stores = {}
    # SAM's static automaton comes from the same generated answers, so the GPU methods table can use it.
    for method in ("rest", "dresd", "sam"):
        out = args.work / method
        ok = (out / "manifest.json").is_file() and not args.rebuild
        if ok:
            m = read_manifest(out)
            ok = (
                m.get("corpus", {}).get("spec") == f"generate:{args.corpus}"
                and m["tokenizer"]["name"] == args.model
            )
        if not ok:
            console.print(f"[bold]building {method}[/bold] datastore in {out}")
            opt = dresd_opt if method == "dresd" else {}
            build_index(method, args.model, f"generate:{args.corpus}", out, options | {"opt": opt}, console)
        stores[method] = out
    return stores


def store_summary(path: Path) -> dict:
    from specbench_cli.datastores.manifest import read_manifest

    m = read_manifest(path)
    keep = ("tokens", "documents", "vectors", "dim", "layer", "index", "nprobe", "recall", "self_retrieval")
    out = {k: m[k] for k in keep if k in m}
    b = m.get("build", {})
    out |= {
        k: b.get(k)
        for k in ("seconds", "forward_seconds", "tokens_per_s", "bytes_on_disk", "peak_rss_mb", "peak_gpu_mb")
        if k in b
    }
    out["corpus"] = m.get("corpus", {}).get("description")
    return out


# ----------------------------------------------------------------------------------------------------
# Evaluation


def percentile_ms(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)) * 1e3, 4) if xs else None


def aggregate(runs: list[dict], ar_runs: dict) -> dict:
    """One suite x method: totals over its questions (ratios of sums, like report/metrics.py)."""
    steps = [s for r in runs for s in r["steps"]]
    drafting = [s for r in runs for s in r["steps"][1:]]  # the prefill step never drafts
    new = sum(r["new_tokens"] for r in runs)
    wall = sum(r["wall"] for r in runs)
    nodes = sum(s["nodes"] for s in steps)
    depth = sum(s["depth"] for s in steps)
    acc = sum(s["accepted"] for s in steps)
    t_draft = [s["t_draft"] for s in drafting]
    ar_new = sum(ar_runs[r["qid"]]["new_tokens"] for r in runs)
    ar_wall = sum(ar_runs[r["qid"]]["wall"] for r in runs)
    tps = new / wall if wall else float("nan")
    return {
        "questions": len(runs),
        "new_tokens": new,
        "steps": len(steps),
        "acceptance_rate": round(acc / nodes, 4) if nodes else None,
        "accepted_per_depth": round(acc / depth, 4) if depth else None,
        "mean_accepted_length": round(new / len(steps), 4),
        "tokens_per_s": round(tps, 3),
        "speedup": round(tps / (ar_new / ar_wall), 4) if ar_wall else None,
        "draft_rate": round(sum(1 for s in drafting if s["nodes"]) / max(len(drafting), 1), 4),
        "mean_draft_nodes": round(nodes / max(len(drafting), 1), 2),
        "draft_ms_p50": percentile_ms(t_draft, 50),
        "draft_ms_p99": percentile_ms(t_draft, 99),
        "draft_ms_mean": round(float(np.mean(t_draft)) * 1e3, 4) if t_draft else None,
        "verify_ms_mean": round(float(np.mean([s["t_verify"] for s in drafting])) * 1e3, 3)
        if drafting
        else None,
        "lossless": round(float(np.mean([r["ids"] == ar_runs[r["qid"]]["ids"] for r in runs])), 4),
    }


def evaluate(args, stores: dict[str, Path], device: str, dtype: str, console) -> tuple[dict, dict]:
    import torch

    from specbench_cli.datastores.manifest import check_datastore
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.models import load_model, tokenizer_fingerprint
    from specbench_cli.prompts import build_prompt_ids
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.suites import load_suite
    from specbench_cli.types import MethodSetup

    target = load_model(args.model, dtype=dtype, device=device)
    suites = [load_suite(s, args.limit, 0) for s in args.suites.split(",")]
    fp = tokenizer_fingerprint(target.tokenizer)
    for kind, path in stores.items():
        for s in suites:  # refuses a datastore that contains the evaluated questions
            check_datastore(path, kind, fp, s.name, s.sha256, force=False)
    drafters = {m: DRAFTERS.get(m)(MethodSetup(target=target, datastores=stores)) for m in METHODS}
    engine = Engine(target, max_len=2048)
    torch.manual_seed(0)
    warm = build_prompt_ids(target.tokenizer, [suites[0].questions[0].turns[0]], [])
    for m in METHODS:  # allocator, kernels, FAISS and numba settle before timing
        generate(engine, drafters[m], warm, 16)
    dresd = drafters["dresd"]
    dresd.clear_stats()  # its counters from here on cover the measured answers only

    per_suite: dict[str, dict] = {}
    per_suite_runs: list[dict[str, list[dict]]] = []
    t0 = time.perf_counter()
    total = sum(len(s.questions) for s in suites) * len(METHODS)
    done = 0
    for s in suites:
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for q in s.questions:
            ids = build_prompt_ids(target.tokenizer, [q.turns[0]], [])  # first turn only (DReSD)
            for m in METHODS:
                g = generate(engine, drafters[m], ids, args.max_new_tokens)
                steps = [
                    {
                        "nodes": st.draft_nodes,
                        "depth": st.draft_depth,
                        "accepted": st.accepted,
                        "t_draft": st.t_draft,
                        "t_verify": st.t_verify,
                    }
                    for st in g.steps
                ]
                runs[m].append(
                    {
                        "qid": q.question_id,
                        "new_tokens": g.new_tokens,
                        "wall": g.wall_time,
                        "steps": steps,
                        "ids": g.output_ids,
                    }
                )
                done += 1
            rate = done / (time.perf_counter() - t0)
            console.print(
                f"{s.name} q{q.question_id}: {done}/{total} answers, ETA {(total - done) / rate:,.0f} s",
                highlight=False,
            )
        per_suite_runs.append(runs)
        ar_runs = {r["qid"]: r for r in runs["ar"]}
        per_suite[s.name] = {m: aggregate(runs[m], ar_runs) for m in METHODS}
    # Per drafting step (the prefill step of each answer drafts nothing), from DReSD's own counters.
    dresd_steps = [st for s in per_suite_runs for r in s["dresd"] for st in r["steps"][1:]]
    stats = dresd.stats()
    forms = {
        "retrieval_ms_mean": round(stats["retrieval_seconds"] * 1e3 / max(len(dresd_steps), 1), 3),
        "mean_tree_nodes": round(float(np.mean([st["nodes"] for st in dresd_steps])), 2),
        "mean_batch_tokens": round(stats["batch_tokens"] / max(len(dresd_steps), 1), 2),
        "note": "greedy: the merged tree accepts exactly what the batch of candidate rows accepts; "
        "the tree verifies mean_tree_nodes tokens per step where the batch verifies mean_batch_tokens",
        "backend": dresd.store.backend,
    }
    return per_suite, forms


def ratios(per_suite: dict) -> dict:
    def gain(a, b):
        return round(a / b - 1, 4) if a is not None and b else None

    out = {}
    for suite, rows in per_suite.items():
        d, r = rows["dresd"], rows["rest"]
        out[suite] = {
            "acceptance_rate (accepted/depth, DReSD's definition)": gain(
                d["accepted_per_depth"], r["accepted_per_depth"]
            ),
            "acceptance_rate (accepted/nodes)": gain(d["acceptance_rate"], r["acceptance_rate"]),
            "accepted_length": gain(d["mean_accepted_length"], r["mean_accepted_length"]),
            "tokens_per_s": gain(d["tokens_per_s"], r["tokens_per_s"]),
        }
    return out


def main() -> None:
    args = parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table

    from specbench_cli.evaluate import resolve_device

    console = Console(stderr=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device, args.dtype)
    args.corpus = args.corpus or default_corpus()
    args.work = (
        args.work
        or Path("/tmp/specbench-dresd-bench")
        / f"{args.model.replace('/', '_')}-{args.corpus_docs}-{args.gen_tokens}"
    )
    t0 = time.perf_counter()
    if args.stage == "eval":
        stores = {m: args.work / m for m in ("rest", "dresd")}
        missing = [str(p) for p in stores.values() if not (p / "manifest.json").is_file()]
        if missing:
            sys.exit(f"--stage eval: no datastore in {', '.join(missing)}; run --stage build first")
    else:
        stores = build_stores(args, device, dtype, console)
    t_build = time.perf_counter() - t0
    if args.stage == "build":
        Console().print_json(data={m: store_summary(p) for m, p in stores.items()})
        return
    per_suite, forms = evaluate(args, stores, device, dtype, console)
    result = {
        "model": args.model,
        "device": device,
        "dtype": dtype,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        },
        "settings": {
            "corpus": f"generate:{args.corpus}",
            "corpus_docs": args.corpus_docs,
            "gen_tokens": args.gen_tokens,
            "suites": args.suites,
            "questions_per_suite": args.limit,
            "max_new_tokens": args.max_new_tokens,
            "greedy": True,
            "first_turn_only": True,
        },
        "datastores": {m: store_summary(p) for m, p in stores.items()},
        "build_seconds_total": round(t_build, 1),
        "eval_seconds": round(time.perf_counter() - t0 - t_build, 1),
        "results": per_suite,
        "dresd_over_rest": ratios(per_suite),
        "paper_dresd_over_rest": PAPER_GAINS,
        "dresd_tree_vs_batch": forms,
    }
    out = args.out or RESULTS / f"dresd_vs_rest_{args.model.replace('/', '_')}_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)

    table = Table(title=f"{args.model} on {device}: {out}")
    for col in (
        "suite",
        "method",
        "AR nodes",
        "AR depth",
        "MAL",
        "tok/s",
        "speedup",
        "draft ms p50",
        "lossless",
    ):
        table.add_column(col)
    for suite, rows in per_suite.items():
        for m, r in rows.items():
            table.add_row(
                suite,
                m,
                *(
                    str(r[k])
                    for k in (
                        "acceptance_rate",
                        "accepted_per_depth",
                        "mean_accepted_length",
                        "tokens_per_s",
                        "speedup",
                        "draft_ms_p50",
                        "lossless",
                    )
                ),
            )
    Console().print(table)
    Console().print_json(data=result["dresd_over_rest"])


if __name__ == "__main__":
    main()
