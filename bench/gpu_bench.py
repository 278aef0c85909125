"""GPU benchmark: our engines (eager, compiled) and every available method against plain transformers.

Runs ON the GPU machine (see bench/README.md for how models and questions get there). Subcommands:

    export   (here)   pick the questions and write them as Spec-Bench JSONL into a carried folder
    prepare  (there)  GGUF -> bf16 safetensors folder, once per machine (slow GGUF parsing off the clock)
    micro    (there)  random-weight models of the real shapes: compiled vs eager correctness and
                      per-bucket forward times of the runner variants (attention, backend, compile)
    run      (there)  the benchmark: one JSON with tokens/s, speedups, accepted length, step breakdown
    table    (here)   print the summary table of a result JSON

`run` times, in one process and on the same questions: transformers `generate` eager and with a
static cache (compiled by transformers), and for every method our eager and compiled engines. Compiled
runs take every question; eager runs (CPU-bound, ~10x slower) take the first `--eager-limit` ones, and
every speedup is computed on the questions both sides ran. Each question runs all runs of its group
in turn (drift stays out of ratios) and the JSON is rewritten after every question, so a run cut off by
`--time-budget` or a timeout still leaves consistent numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from specbench_cli.types import SpecbenchError  # noqa: E402

BASELINES = ("ar/eager", "ar/compiled", "hf/eager", "hf/static")


# ---------------------------------------------------------------------------------------------------
# export: questions as files that travel with the working tree


def cmd_export(args: argparse.Namespace) -> None:
    from specbench_cli.suites import load_suite

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    for label, spec, limit in (
        ("spec-bench", f"spec-bench:{args.spec_bench}", args.spec_bench_limit),
        ("humaneval", "humaneval", args.humaneval_limit),
    ):
        if limit <= 0:
            continue
        suite = load_suite(spec, limit=limit)
        rows = [
            {"question_id": q.question_id, "category": q.category, "turns": list(q.turns)}
            for q in suite.questions
        ]
        path = out / f"{label}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sources[label] = {"source": suite.source, "sha256": suite.sha256, "questions": len(rows)}
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["category"]] = counts.get(r["category"], 0) + 1
        print(f"{path}: {len(rows)} questions {counts}")
    (out / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------
# prepare: a GGUF staged on the machine -> a bf16 safetensors folder that models.py loads in seconds


def cmd_prepare(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specbench_cli.env import sha256_file
    from specbench_cli.models import GGUF_MODELS

    alias, _, path = args.model.partition("=")
    gguf = Path(path)
    out = Path(args.to)
    start = time.perf_counter()
    sha = sha256_file(gguf)
    expected = GGUF_MODELS[alias].sha256 if alias in GGUF_MODELS else None
    if expected and sha != expected:
        raise SpecbenchError(f"{gguf}: sha256 {sha[:12]}... is not {alias}'s {expected[:12]}...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised already: drop the GGUF "quantizer" (transformers 5.17 refuses to
    # save a model that has one). The benchmark runs in bf16: casting now gives what it would cast.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {"alias": alias, "gguf_sha256": sha, "gguf_file": str(gguf), "dtype": "bfloat16"}
    (out / "specbench.json").write_text(json.dumps(marker, indent=2) + "\n")
    print(f"{alias}: {out} in {time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def device_info() -> dict[str, Any]:
    import platform

    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "host": platform.node(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "device": props.name,
            "gpus": torch.cuda.device_count(),
            "memory_gb": props.total_memory / 2**30,
        }
    else:
        info["device"] = "cpu"
    return info


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def swap_in_compiled_runners(
    obj: Any, max_len: int, attention: str, compile_mode: str | None, shared: dict, depth: int = 2
) -> int:
    """Replace the eager ModelRunners a drafter owns (its draft model) with CompiledRunners.

    A drafter builds its own runner for its draft model; under the compiled engine that runner must
    be compiled too, or sps times an eager draft model against a compiled target. Drafters of the same
    draft model share one (`shared`, by model): each resets it at the start of a generation, and a
    second one would only cost another compilation.
    """
    from specbench_cli.engine.compiled import CompiledRunner
    from specbench_cli.engine.runner import ModelRunner

    swapped = 0
    for name, value in list(vars(obj).items()):
        if isinstance(value, ModelRunner):
            runner = shared.get(id(value.model))
            if runner is None:
                runner = CompiledRunner(
                    value.model, max_len, 63, attention=attention, compile_mode=compile_mode
                )
                shared[id(value.model)] = runner
            setattr(obj, name, runner)
            swapped += 1
        elif (
            depth > 0
            and hasattr(value, "__dict__")
            and type(value).__module__.startswith("specbench_cli.drafters")
        ):
            swapped += swap_in_compiled_runners(value, max_len, attention, compile_mode, shared, depth - 1)
    return swapped


def compiled_runners(obj: Any, depth: int = 2) -> list[Any]:
    from specbench_cli.engine.compiled import CompiledRunner

    found = []
    for value in vars(obj).values():
        if isinstance(value, CompiledRunner):
            found.append(value)
        elif (
            depth > 0
            and hasattr(value, "__dict__")
            and type(value).__module__.startswith("specbench_cli.drafters")
        ):
            found += compiled_runners(value, depth - 1)
    return found


# ---------------------------------------------------------------------------------------------------
# run: the benchmark


@dataclass
class Result:
    output_ids: list[int]
    wall: float
    steps: list | None = None  # StepRecords (our engine only)
    gpu_forward: float | None = None  # target forward GPU time (compiled engine only)


@dataclass
class Run:
    key: str  # "pld/compiled", "hf/static", ...
    method: str
    engine: str
    group: str  # "compiled" (all questions) or "eager" (the first --eager-limit)
    generate: Callable[[list[int], int], Result]  # (prompt ids, max new tokens) -> Result
    lossless: bool = True
    records: dict = field(default_factory=dict)  # (qid, turn) -> per-generation numbers
    outputs: dict = field(default_factory=dict)  # (qid, turn) -> output ids
    done: list = field(default_factory=list)  # question ids with every turn finished
    setup_s: float = 0.0
    error: str | None = None


def our_generate(engine: Any, drafter: Any, profile: bool) -> Callable[[list[int], int], Result]:
    from specbench_cli.engine.decode import generate

    def run(prompt_ids: list[int], max_new: int) -> Result:
        gen = generate(engine, drafter, prompt_ids, max_new)
        forward = None
        if profile:
            times = engine.runner.take_forward_times()
            if len(prompt_ids) <= engine.runner.buckets[-1]:
                times = times[1:]  # that prefill ran through a graph too; keep decode steps only
            forward = sum(times)
        return Result(gen.output_ids, gen.wall_time, gen.steps, forward)

    return run


def hf_generate(loaded: Any, static_len: int | None) -> Callable[[list[int], int], Result]:
    """transformers' own greedy `generate`: eager (dynamic cache, no compile) or with one reused
    StaticCache, whose decode step transformers compiles itself (its documented fast path)."""
    import torch
    from transformers import StaticCache

    model = loaded.model
    eos = loaded.eos_ids
    cache = StaticCache(config=model.config, max_cache_len=static_len) if static_len else None
    options = dict(
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        eos_token_id=eos or None,
        pad_token_id=eos[0] if eos else None,
    )

    def run(prompt_ids: list[int], max_new: int) -> Result:
        ids = torch.tensor([prompt_ids], device=model.device)
        extra: dict[str, Any] = {"disable_compile": True} if cache is None else {"past_key_values": cache}
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            if cache is not None:
                cache.reset()  # its tensors were made under inference mode: reset them there too
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, **options, **extra
            )
        sync()
        return Result(out[0, len(prompt_ids) :].tolist(), time.perf_counter() - start)

    return run


def check_runner(runner: Any, prompt_ids: list[int]) -> dict[str, Any]:
    """Compiled vs eager forwards of the same model on one tree and one single token.

    In bf16 the two differ by rounding (different kernels), so this bounds the difference rather than
    asserting equality; a broken kernel shows up as O(1) differences and disagreeing argmaxes.
    """
    import torch

    from specbench_cli.engine.runner import ModelRunner

    eager = ModelRunner(runner.model, runner.max_len)
    rng = random.Random(0)
    prompt = prompt_ids[: runner.max_len // 2]
    n = min(40, runner.buckets[-1])
    parents = [-1] + [rng.randint(0, i - 1) for i in range(1, n)]
    tokens = [rng.choice(prompt) for _ in range(n)]
    outs = []
    for r in (runner, eager):
        r.reset()
        r.forward(prompt, last_only=True)
        r.commit(list(range(len(prompt))))
        tree, _ = r.forward(tokens, parents)
        r.commit([0])
        single, _ = r.forward(tokens[1:2])
        outs.append(torch.cat([tree, single]))
        r.reset()
    a, b = outs
    rel = ((a - b).abs().max() / b.abs().max()).item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return {
        "max_rel_logit_diff": round(rel, 5),
        "top1_agreement": round(top1, 4),
        "ok": rel < 0.1 and top1 >= 0.8,
    }


def checked_runner(
    loaded: Any, max_len: int, max_nodes: int, prompt_ids: list[int], console: Callable
) -> tuple:
    """The target's compiled runner, captured and checked; falls back to packed SDPA if the tree kernel
    disagrees with the eager runner (the fallback was checked in float32 on an H200)."""
    from specbench_cli.engine.compiled import CompiledRunner

    report: dict[str, Any] = {}
    for attention in ("tree", "packed"):
        start = time.perf_counter()
        runner = CompiledRunner(loaded.model, max_len, max_nodes, attention=attention)
        runner.prepare()
        check = check_runner(runner, prompt_ids)
        report[attention] = check | {
            "setup_s": round(time.perf_counter() - start, 1),
            "compile_mode": runner.compile_mode,
            "compile_error": runner.compile_error,
        }
        console(f"compiled runner ({attention}): {report[attention]}")
        if check["ok"]:
            return runner, report
    raise SpecbenchError(f"no compiled runner variant agrees with the eager runner: {report}")


def build_runs(
    args: argparse.Namespace, target: Any, draft: Any, max_len: int, console: Callable, runner: Any = None
) -> list[Run]:
    from specbench_cli.engine.decode import Engine
    from specbench_cli.evaluate import datastores_by_method, parse_method_options
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.types import MethodSetup

    stores = datastores_by_method([Path(p) for p in args.datastore])
    options = parse_method_options(args.method_opt)
    names = args.methods.split(",") if args.methods else DRAFTERS.names()
    if "ar" not in names:
        names = ["ar", *names]  # the baseline every ratio needs
    methods = []
    for name in names:
        cls = DRAFTERS.get(name)
        if cls.needs_draft_model and draft is None:
            console(f"skip {name}: needs a draft model")
            continue
        if cls.datastore_kind and cls.datastore_kind not in stores:
            console(f"skip {name}: no --datastore for '{cls.datastore_kind}'")
            continue
        methods.append((name, cls))

    engines = {
        kind: Engine(target, max_len=max_len, max_nodes=args.max_nodes, kind=kind) for kind in args.engines
    }
    if "compiled" in engines:
        if runner is not None:
            engines["compiled"].runner = runner  # already captured and checked
        engines["compiled"].runner.profile = engines["compiled"].runner.use_graphs
    runs: list[Run] = []
    draft_runners: dict = {}
    for kind in ("compiled", "eager"):
        if kind not in engines:
            continue
        if args.hf:
            hf_kind = "static" if kind == "compiled" else "eager"
            gen = hf_generate(target, max_len if hf_kind == "static" else None)
            runs.append(Run(f"hf/{hf_kind}", "hf", hf_kind, kind, gen))
        for name, cls in methods:
            setup = MethodSetup(target=target, draft=draft, datastores=stores, options=options.get(name, {}))
            drafter = cls(setup)
            if kind == "compiled":
                attention = getattr(engines["compiled"].runner, "attention", "tree")
                swap_in_compiled_runners(drafter, max_len, attention, args.draft_compile, draft_runners)
            profile = kind == "compiled" and engines[kind].runner.use_graphs  # CUDA events
            gen = our_generate(engines[kind], drafter, profile=profile)
            run = Run(f"{name}/{kind}", name, kind, kind, gen, lossless=bool(cls.lossless))
            run.drafter, run.engine_obj = drafter, engines[kind]  # type: ignore[attr-defined]
            runs.append(run)
    return runs


def warm_up(run: Run, prompt_ids: list[int], max_new: int) -> None:
    """Capture every bucket (compiled), compile (hf static), and run short generations: off the clock."""
    start = time.perf_counter()
    engine = getattr(run, "engine_obj", None)
    if engine is not None and run.engine == "compiled":
        engine.runner.prepare(want_hidden=run.drafter.needs_hidden_states)  # type: ignore[attr-defined]
        for runner in compiled_runners(run.drafter):  # type: ignore[attr-defined]
            runner.prepare()
    # Two prompt lengths: transformers' compiled path must show it does not recompile per prompt.
    run.generate(prompt_ids, min(max_new, 32))
    run.generate(prompt_ids[: max(1, len(prompt_ids) - 7)], min(max_new, 32))
    if engine is not None and run.engine == "compiled":
        engine.runner.take_forward_times()  # drop the warm-up's events
    run.setup_s = time.perf_counter() - start


def step_record(res: Result) -> dict[str, Any]:
    rec: dict[str, Any] = {"new_tokens": len(res.output_ids), "wall_s": res.wall}
    if res.steps is not None:
        decode = res.steps[1:]  # steps[0] is the prefill
        rec |= {
            "forwards": len(res.steps),
            "prefill_s": res.steps[0].t_verify,
            "drafted": sum(s.draft_nodes for s in decode),
            "accepted": sum(s.accepted for s in decode),
            "t_draft": sum(s.t_draft for s in decode),
            "t_verify": sum(s.t_verify for s in decode),
            "t_other": sum(s.t_other for s in decode),
            "decode_steps": len(decode),
        }
    if res.gpu_forward is not None:
        rec["gpu_forward_s"] = res.gpu_forward
    return rec


def answer(run: Run, question: Any, tokenizer: Any, max_new: int) -> None:
    from specbench_cli.suites import build_prompt_ids

    answers: list[str] = []
    for turn in range(len(question.turns)):
        ids = build_prompt_ids(tokenizer, list(question.turns[: turn + 1]), answers)
        res = run.generate(ids, max_new)
        key = (question.question_id, turn)
        run.records[key] = step_record(res) | {"category": question.category}
        run.outputs[key] = res.output_ids
        answers.append(tokenizer.decode(res.output_ids, skip_special_tokens=True))
    run.done.append(question.question_id)


def aggregate(run: Run, qids: set) -> dict[str, Any]:
    recs = [r for (q, _), r in run.records.items() if q in qids]
    tokens = sum(r["new_tokens"] for r in recs)
    wall = sum(r["wall_s"] for r in recs)
    out: dict[str, Any] = {
        "questions": len(qids),
        "generations": len(recs),
        "new_tokens": tokens,
        "wall_s": round(wall, 4),
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
    }
    if recs and "forwards" in recs[0]:
        forwards = sum(r["forwards"] for r in recs)
        drafted = sum(r["drafted"] for r in recs)
        steps = sum(r["decode_steps"] for r in recs)
        t = {k: sum(r[k] for r in recs) for k in ("t_draft", "t_verify", "t_other")}
        step_total = sum(t.values())
        out |= {
            "mean_accepted_length": round(tokens / forwards, 3),
            "acceptance_rate": round(sum(r["accepted"] for r in recs) / drafted, 4) if drafted else None,
            "step_ms": {k[2:]: round(1000 * v / steps, 4) for k, v in t.items()} if steps else None,
            # The share of a decode step spent outside the verification phase (drafting + bookkeeping).
            "outside_verify_fraction": round((t["t_draft"] + t["t_other"]) / step_total, 4)
            if step_total
            else None,
        }
        if "gpu_forward_s" in recs[0] and step_total and steps:
            gpu = sum(r["gpu_forward_s"] for r in recs)
            out["target_forward_gpu_ms"] = round(1000 * gpu / steps, 4)
            # The share of decode-step wall time in which the target's forward was not running on the
            # GPU: Python, drafting (a draft model's forwards included), syncs, compaction.
            out["overhead_fraction"] = round(max(0.0, 1 - gpu / step_total), 4)
    return out


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per run: its own aggregate, and ratios / match rates against each baseline on shared questions."""
    by_key = {r.key: r for r in runs}
    table = {}
    for run in runs:
        done = set(run.done)
        entry = aggregate(run, done) | {
            "method": run.method,
            "engine": run.engine,
            "setup_s": round(run.setup_s, 2),
        }
        if run.error:
            entry["error"] = run.error
        speedups, lossless = {}, {}
        for base_key in BASELINES:
            base = by_key.get(base_key)
            if base is None or base is run:
                continue
            shared = done & set(base.done)
            if not shared:
                continue
            mine, theirs = aggregate(run, shared), aggregate(base, shared)
            if mine["tokens_per_s"] and theirs["tokens_per_s"]:
                speedups[base_key] = {
                    "x": round(mine["tokens_per_s"] / theirs["tokens_per_s"], 3),
                    "questions": len(shared),
                }
        # bf16 lossless rate: same output ids as ar on the same engine (hf: as ar on the matching engine).
        ref_key = "ar/compiled" if run.engine in ("compiled", "static") else "ar/eager"
        ref = by_key.get(ref_key)
        if ref is not None and ref is not run:
            keys = [k for k in run.outputs if k in ref.outputs and k[0] in done and k[0] in set(ref.done)]
            if keys:
                same = sum(run.outputs[k] == ref.outputs[k] for k in keys)
                lossless = {"vs": ref_key, "generations": len(keys), "identical": round(same / len(keys), 4)}
        entry["speedup"] = speedups
        entry["bf16_match"] = lossless or None
        cats = sorted({r["category"] for r in run.records.values()})
        entry["by_category"] = {}
        ar_ref = by_key.get("ar/compiled" if run.group == "compiled" else "ar/eager")
        for cat in cats:
            qids = {q for (q, _), r in run.records.items() if r["category"] == cat and q in done}
            agg = aggregate(run, qids)
            cat_entry = {"questions": len(qids), "tokens_per_s": agg["tokens_per_s"]}
            if "mean_accepted_length" in agg:
                cat_entry["mean_accepted_length"] = agg["mean_accepted_length"]
            if ar_ref is not None and ar_ref is not run:
                shared = qids & set(ar_ref.done)
                base = aggregate(ar_ref, shared)
                mine = aggregate(run, shared)
                if shared and base["tokens_per_s"] and mine["tokens_per_s"]:
                    cat_entry[f"speedup_vs_{ar_ref.key}"] = round(
                        mine["tokens_per_s"] / base["tokens_per_s"], 3
                    )
            entry["by_category"][cat] = cat_entry
        table[run.key] = entry
    return table


def interleave(questions: list[Any]) -> list[Any]:
    """Round-robin over categories, so a prefix (the eager subset) covers every task."""
    groups: dict[str, list[Any]] = {}
    for q in questions:
        groups.setdefault(q.category, []).append(q)
    out = []
    while any(groups.values()):
        for items in groups.values():
            if items:
                out.append(items.pop(0))
    return out


def needed_len(tokenizer: Any, questions: list[Any], max_new: int, max_nodes: int) -> int:
    """A static cache length that fits every turn: prompt text + earlier answers + budget + draft."""
    from specbench_cli.suites import build_prompt_ids

    worst = 0
    for q in questions:
        turns = list(q.turns)
        ids = build_prompt_ids(tokenizer, turns, [""] * (len(turns) - 1))
        # Each earlier answer is at most max_new tokens (+ slack for re-tokenising its text).
        worst = max(worst, len(ids) + (len(turns) - 1) * (max_new + 16))
    return -(-(worst + max_new + max_nodes + 2) // 256) * 256


def load(spec: str, dtype: str, device: str) -> Any:
    from specbench_cli.models import load_model

    start = time.perf_counter()
    loaded = load_model(spec, dtype=dtype, device=device)
    print(f"loaded {spec} in {time.perf_counter() - start:.1f} s ({loaded.source})", flush=True)
    return loaded


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from specbench_cli.suites import load_suite

    t0 = time.perf_counter()
    deadline = t0 + args.time_budget

    def console(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # cuDNN attention re-plans on every new KV length: ms of CPU per layer in eager mode on H100
        # (gpu.md). Off for every eager path here, ours and transformers' alike.
        torch.backends.cuda.enable_cudnn_sdp(False)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    questions = []
    suites = {}
    for spec in args.suite:
        suite = load_suite(spec, limit=args.limit)
        questions += suite.questions
        suites[suite.name] = {
            "source": suite.source,
            "sha256": suite.sha256,
            "questions": len(suite.questions),
        }
    questions = interleave(questions)
    target_spec, _, draft_spec = args.model.partition("+")
    target = load(target_spec, dtype, device)
    draft = load(draft_spec, dtype, device) if draft_spec else None
    max_len = args.max_len or needed_len(target.tokenizer, questions, args.max_new_tokens, args.max_nodes)
    console(f"{len(questions)} questions, static cache {max_len} tokens")

    from specbench_cli.suites import build_prompt_ids

    warm_ids = build_prompt_ids(target.tokenizer, [questions[0].turns[0]], [])
    runner, runner_report = None, None
    if "compiled" in args.engines and device == "cuda":
        runner, runner_report = checked_runner(target, max_len, args.max_nodes, warm_ids, console)
    runs = build_runs(args, target, draft, max_len, console, runner)
    out_path = Path(args.out)
    meta = {
        "machine": device_info() | {"cudnn_sdp": False if device == "cuda" else None},
        "config": {
            "model": target_spec,
            "draft_model": draft_spec or None,
            "model_sha256": {"target": target.sha256, "draft": draft.sha256 if draft else None},
            "dtype": dtype,
            "max_new_tokens": args.max_new_tokens,
            "max_len": max_len,
            "max_nodes": args.max_nodes,
            "eager_limit": args.eager_limit,
            "suites": suites,
            "compiled_runner": runner_report,
            "draft_compile": args.draft_compile,
            "time_budget_s": args.time_budget,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def save(status: str) -> None:
        write_json(
            out_path,
            meta
            | {"status": status, "elapsed_s": round(time.perf_counter() - t0, 1), "runs": summarize(runs)},
        )

    status = "complete"
    groups = {"compiled": questions, "eager": questions[: args.eager_limit]}
    group_deadline = {"compiled": t0 + args.time_budget * args.compiled_share, "eager": deadline}
    for group, items in groups.items():
        members = [r for r in runs if r.group == group]
        if not members or not items:
            continue
        for run in members:
            console(f"warm-up {run.key}")
            try:
                warm_up(run, warm_ids, args.max_new_tokens)
            except Exception as err:  # one broken run must not sink the others
                run.error = f"{type(err).__name__}: {err}"
                console(f"  {run.key} failed: {run.error}")
            console(f"  {run.key} ready in {run.setup_s:.1f} s")
        members = [r for r in members if r.error is None]
        for i, q in enumerate(items):
            if time.perf_counter() > group_deadline[group]:
                status = f"partial: time budget reached in the {group} group after {i} questions"
                console(status)
                break
            for run in members:
                if run.error:
                    continue
                try:
                    answer(run, q, target.tokenizer, args.max_new_tokens)
                except Exception as err:
                    run.error = f"{type(err).__name__} on question {q.question_id}: {err}"
                    console(f"  {run.key} failed: {run.error}")
            line = "  ".join(
                f"{r.key} {aggregate(r, set(r.done))['tokens_per_s']}" for r in members if r.done
            )
            console(f"{group} {i + 1}/{len(items)} [{q.category}] tok/s: {line}")
            save(status if status != "complete" else "running")
    save(status)
    print_table(json.loads(out_path.read_text()))
    console(f"wrote {out_path}")


# ---------------------------------------------------------------------------------------------------
# table: the summary of a result JSON


def print_table(result: dict) -> None:
    cfg, machine = result["config"], result["machine"]
    print(
        f"\n{cfg['model']} (+{cfg['draft_model']}) on {machine.get('device')}, {cfg['dtype']}, status: {result['status']}"
    )
    head = f"{'run':16} {'q':>3} {'tok/s':>8} {'MAT':>5} {'acc':>5} {'xAR-e':>6} {'xAR-c':>6} {'xHF-e':>6} {'xHF-s':>6} {'ovh':>5} {'bf16=':>5}"
    print(head)
    for key, e in result["runs"].items():
        sp = e.get("speedup", {})

        def ratio(base: str, sp: dict = sp) -> str:
            return f"{sp[base]['x']:.2f}" if base in sp else "-"

        match = e.get("bf16_match") or {}
        overhead = e.get("overhead_fraction", e.get("outside_verify_fraction"))

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        print(
            f"{key:16} {e['questions']:>3} {e['tokens_per_s'] or 0:>8.1f} "
            f"{num(e.get('mean_accepted_length')):>5} {num(e.get('acceptance_rate')):>5} "
            f"{ratio('ar/eager'):>6} {ratio('ar/compiled'):>6} {ratio('hf/eager'):>6} {ratio('hf/static'):>6} "
            f"{num(overhead):>5} {match.get('identical', '-'):>5}"
        )


def cmd_table(args: argparse.Namespace) -> None:
    for path in args.results:
        print_table(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------------------------
# micro: runner variants on random-weight models of the real shapes (no model files needed)

SHAPES = {
    # Qwen2.5-Coder-1.5B-Instruct and SmolLM2-135M-Instruct, as their configs give them.
    "qwen2.5-coder-1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
    ),
    "tiny": dict(  # for a CPU smoke run of `micro`
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e4, rms_norm_eps=1e-5,
    ),
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=1e5, rms_norm_eps=1e-5,
    ),
}  # fmt: skip


def random_model(shape: str, dtype: Any) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None  # random weights: decode the full budget
    return model.eval().requires_grad_(False)


def time_buckets(runner: Any, sizes: list[int], context: int, reps: int) -> dict[str, float]:
    """Median GPU ms of one forward per bucket, graph replays timed with CUDA events."""
    import torch

    out = {}
    for size in sizes:
        runner.reset()
        runner.length = context
        tree = [-1] + list(range(size - 1))
        times = []
        for _ in range(reps):
            if torch.cuda.is_available():
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                runner.forward(list(range(size)), tree)
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
            else:  # a CPU smoke run of this script
                start = time.perf_counter()
                runner.forward(list(range(size)), tree)
                times.append(1000 * (time.perf_counter() - start))
        out[str(size)] = round(sorted(times)[len(times) // 2], 4)
    runner.reset()
    return out


def cmd_micro(args: argparse.Namespace) -> None:
    import torch

    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.drafters.base import Drafter
    from specbench_cli.engine.compiled import CompiledRunner
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.engine.runner import ModelRunner
    from specbench_cli.types import DraftTree, LoadedModel, MethodSetup

    t0 = time.perf_counter()
    torch.backends.cuda.enable_cudnn_sdp(False)
    no_tokenizer = types.SimpleNamespace(eos_token_id=None)  # random weights: no text, no EOS
    result: dict[str, Any] = {"machine": device_info(), "shapes": {}}
    out_path = Path(args.out)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    class RandomTrees(Drafter):
        name = "random-trees"

        def __init__(self, setup: MethodSetup, seed: int):
            super().__init__(setup)
            self.rng = random.Random(seed)

        def propose(self, ctx: Any) -> DraftTree:
            n = min(self.rng.choice([0, 5, 15, 40, 100]), ctx.max_nodes)
            toks = [self.rng.choice(ctx.tokens) for _ in range(n)]
            return DraftTree(tuple(toks), tuple(self.rng.randint(-1, i - 1) for i in range(n)))

    for shape in args.shapes.split(","):
        res: dict[str, Any] = {}
        result["shapes"][shape] = res
        # 1. correctness in float32: logits of graph replays vs the eager runner; greedy outputs.
        model = random_model(shape, torch.float32)
        loaded = LoadedModel(model, no_tokenizer, shape, "random", None, "float32", "cuda")
        # Graphs without torch.compile here: this checks the kernels and the graph logic in float32.
        eager_runner, comp = ModelRunner(model, 1024), CompiledRunner(model, 1024, 128, compile_mode=None)
        rng = random.Random(0)
        prompt = [rng.randrange(min(1000, model.config.vocab_size)) for _ in range(300)]
        worst = 0.0
        for r in (eager_runner, comp):
            r.forward(prompt)
            r.commit(list(range(len(prompt))))
        for n in (1, 7, 16, 50, 129, 3):
            parents = [-1] + [rng.randint(0, i - 1) for i in range(1, n)]
            toks = [rng.randrange(min(1000, model.config.vocab_size)) for _ in range(n)]
            a, _ = comp.forward(toks, parents)
            b, _ = eager_runner.forward(toks, parents)
            worst = max(worst, (a - b).abs().max().item() / b.abs().max().item())
            kept = [0] + ([n - 1] if parents[n - 1] == 0 else [])
            comp.commit(kept)
            eager_runner.commit(kept)
        res["fp32_max_rel_logit_diff"] = worst
        same = {}
        for name, drafter in (
            ("ar", Autoregressive(MethodSetup(target=loaded))),
            ("random-trees", RandomTrees(MethodSetup(target=loaded), 1)),
        ):
            e1, e2 = Engine(loaded, 1024, 128, "eager"), Engine(loaded, 1024, 128, "eager")
            e2.runner = CompiledRunner(model, 1024, 128, compile_mode=None)
            ref = generate(e1, Autoregressive(MethodSetup(target=loaded)), prompt[:40], 64).output_ids
            got = generate(e2, drafter, prompt[:40], 64).output_ids
            same[name] = got == ref
            del e1, e2
        res["fp32_greedy_equal_to_eager_ar"] = same
        log(f"{shape}: fp32 rel diff {worst:.2e}, greedy equal {same}")
        del model, loaded, eager_runner, comp
        torch.cuda.empty_cache()

        # 2. variants in bf16: per-bucket forward GPU time, and ar tokens/s through the decode loop.
        model = random_model(shape, torch.bfloat16)
        loaded = LoadedModel(model, no_tokenizer, shape, "random", None, "bfloat16", "cuda")
        prompt = [rng.randrange(min(1000, model.config.vocab_size)) for _ in range(200)]
        variants = [v.split(":") for v in args.variants.split(",")]
        res["variants"] = {}
        for attention, backend, mode in variants:
            key = f"{attention}:{backend}:{mode}"
            if time.perf_counter() - t0 > args.time_budget:
                res["variants"][key] = {"skipped": "time budget"}
                continue
            try:
                start = time.perf_counter()
                runner = CompiledRunner(
                    model, args.max_len, 128, attention=attention, backend=backend,
                    compile_mode=None if mode == "eager" else mode,
                )  # fmt: skip
                sizes = runner.buckets
                runner.prepare(sizes)
                setup = time.perf_counter() - start
                check = check_runner(runner, prompt)
                forward_ms = time_buckets(runner, sizes, 1000, 20)
                engine = Engine(loaded, args.max_len, 128, "eager")
                engine.runner = runner  # this variant instead of the default compiled runner
                ar = Autoregressive(MethodSetup(target=loaded))
                generate(engine, ar, prompt, 16)
                gen = generate(engine, ar, prompt, 128)
                res["variants"][key] = {
                    "check_vs_eager_bf16": check,
                    "compile_error": runner.compile_error,
                    "setup_s": round(setup, 1),
                    "forward_ms": forward_ms,
                    "ar_tokens_per_s": round(gen.new_tokens / gen.wall_time, 1),
                }
                log(f"{shape} {key}: {res['variants'][key]}")
                del runner, engine
            except Exception as err:
                res["variants"][key] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
                log(f"{shape} {key}: {type(err).__name__}: {str(err)[:300]}")
            torch.cuda.empty_cache()
            write_json(out_path, result)

        # 3. baselines on the same model: our eager ar; transformers generate eager and static.
        base: dict[str, Any] = {}
        engine = Engine(loaded, args.max_len, 128, "eager")
        ar = Autoregressive(MethodSetup(target=loaded))
        generate(engine, ar, prompt, 8)
        gen = generate(engine, ar, prompt, 64)
        base["ar_eager_tokens_per_s"] = round(gen.new_tokens / gen.wall_time, 1)
        for kind, length in (("hf_eager", None), ("hf_static", args.max_len)):
            if time.perf_counter() - t0 > args.time_budget:
                base[kind] = "skipped: time budget"
                continue
            try:
                fn = hf_generate(loaded, length)
                start = time.perf_counter()
                fn(prompt, 128)
                fn(prompt[:150], 128)
                warm = time.perf_counter() - start
                res1 = fn(prompt[:180], 128)
                base[kind] = {
                    "warmup_s": round(warm, 1),
                    "tokens_per_s": round(len(res1.output_ids) / res1.wall, 1),
                }
            except Exception as err:
                base[kind] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
            log(f"{shape} {kind}: {base[kind]}")
        res["baselines"] = base
        del model, loaded, engine
        torch.cuda.empty_cache()
        write_json(out_path, result)
    log(f"wrote {out_path}")


def cmd_profile(args: argparse.Namespace) -> None:
    """Where a graph forward's time goes: kernel counts and GPU time by kernel, replay vs host time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from specbench_cli.engine.compiled import CompiledRunner

    torch.backends.cuda.enable_cudnn_sdp(False)
    report: dict[str, Any] = {"machine": device_info()}
    # Per-node cost of a graph: 1000 one-element adds, captured once.
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
    report["graph_us_per_tiny_kernel"] = round(begin.elapsed_time(end) * 1000 / 10000, 3)
    print("graph us per tiny kernel", report["graph_us_per_tiny_kernel"], flush=True)
    for shape in args.shapes.split(","):
        model = random_model(shape, torch.bfloat16)
        for variant in args.variants.split(","):
            attention, backend, mode = variant.split(":")
            key = f"{shape} {variant}"
            try:
                runner = CompiledRunner(
                    model, args.max_len, 128, attention=attention, backend=backend,
                    compile_mode=None if mode == "eager" else mode,
                )  # fmt: skip
                entry: dict[str, Any] = {}
                for size in [int(v) for v in args.sizes.split(",")]:
                    runner.prepare([size])
                    runner.length = 1000
                    bucket = runner._buckets[size, False]
                    runner._fill(bucket, list(range(size)), [-1] + list(range(size - 1)), 1000)
                    torch.cuda.synchronize()
                    begin.record()
                    for _ in range(20):
                        bucket.graph.replay()
                    end.record()
                    end.synchronize()
                    replay_ms = begin.elapsed_time(end) / 20
                    start = time.perf_counter()
                    for _ in range(20):
                        bucket.graph.replay()
                    host_ms = (time.perf_counter() - start) * 1000 / 20
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            bucket.graph.replay()
                        torch.cuda.synchronize()
                    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
                    total_us = sum(e.time_range.elapsed_us() for e in kernels) / 5
                    by_name: dict[str, list[float]] = {}
                    for e in kernels:
                        by_name.setdefault(e.name[:90], []).append(e.time_range.elapsed_us() / 5)
                    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[: args.top]
                    entry[str(size)] = {
                        "replay_ms": round(replay_ms, 4),
                        "host_launch_ms": round(host_ms, 4),
                        "kernels": len(kernels) // 5,
                        "kernel_ms": round(total_us / 1000, 4),
                        "top": [(name, len(times) // 5, round(sum(times), 1)) for name, times in top],
                    }
                    print(f"{key} B={size}: replay {replay_ms:.3f} ms, host {host_ms:.3f} ms, "
                          f"{len(kernels) // 5} kernels, {total_us / 1000:.3f} ms kernel time", flush=True)  # fmt: skip
                    for name, count, us in entry[str(size)]["top"]:
                        print(f"    {us:9.1f} us {count:5d}x {name}", flush=True)
                report[key] = entry
                del runner
            except Exception as err:
                report[key] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
                print(key, report[key], flush=True)
            torch.cuda.empty_cache()
            write_json(Path(args.out), report)
        del model
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write the benchmark questions as Spec-Bench JSONL (run here)")
    p.add_argument("--out", default=".benchdata")
    p.add_argument("--spec-bench", default="../shared/data/spec_bench/question.jsonl")
    p.add_argument("--spec-bench-limit", type=int, default=40)
    p.add_argument("--humaneval-limit", type=int, default=20)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("prepare", help="GGUF -> bf16 safetensors folder (run on the GPU machine)")
    p.add_argument("--model", required=True, help="ALIAS=PATH.gguf")
    p.add_argument("--to", required=True, help="output folder (point SPECBENCH_MODEL_<ALIAS> at it)")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("micro", help="runner variants on random-weight models of the real shapes")
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default="qwen2.5-coder-1.5b")
    p.add_argument(
        "--variants",
        default="tree:efficient:default,tree:efficient:eager,packed:efficient:eager,packed:cudnn:eager",
        help="ATTENTION:BACKEND:COMPILE_MODE list (COMPILE_MODE eager = no torch.compile)",
    )
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--time-budget", type=float, default=420)
    p.set_defaults(fn=cmd_micro)

    p = sub.add_parser("profile", help="kernel-level profile of graph forwards (random weights)")
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default="smollm2-135m,qwen2.5-coder-1.5b")
    p.add_argument("--variants", default="tree:efficient:default,tree:efficient:eager")
    p.add_argument("--sizes", default="1,16")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--top", type=int, default=12)
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("run", help="the benchmark (run on the GPU machine)")
    p.add_argument("--model", required=True, help="TARGET[+DRAFT], aliases or paths")
    p.add_argument(
        "--suite", action="append", required=True, help="suite spec, e.g. jsonl:.benchdata/humaneval.jsonl"
    )
    p.add_argument("--limit", type=int, default=None, help="questions per suite")
    p.add_argument(
        "--methods", default=None, help="comma list (default: every registered method that can run)"
    )
    p.add_argument("--datastore", action="append", default=[])
    p.add_argument("--method-opt", action="append", default=[])
    p.add_argument("--engines", default="compiled,eager", type=lambda s: s.split(","))
    p.add_argument("--no-hf", dest="hf", action="store_false", help="skip the transformers baselines")
    p.add_argument("--eager-limit", type=int, default=10, help="questions for the eager group")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-nodes", type=int, default=128)
    p.add_argument(
        "--max-len", type=int, default=None, help="static cache length (default: from the questions)"
    )
    p.add_argument(
        "--draft-compile", default="default", type=lambda s: None if s == "none" else s,
        help="torch.compile mode of draft-model runners under the compiled engine ('none': graphs only)",
    )  # fmt: skip
    p.add_argument("--dtype", default=None)
    p.add_argument("--time-budget", type=float, default=540, help="seconds for the whole process")
    p.add_argument(
        "--compiled-share", type=float, default=0.55, help="budget share the compiled group may use"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("table", help="print the summary of result JSON files")
    p.add_argument("results", nargs="+")
    p.set_defaults(fn=cmd_table)

    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except SpecbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
