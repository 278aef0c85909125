"""`specbench eval`: questions x methods through one engine, answers as Spec-Bench JSONL.

Order of work: everything the user gave is validated first (methods, suites, models, datastores,
the run folder), so a bad input writes nothing. Then, per question, every method runs in turn on the
same engine, which keeps drift (clocks, thermals) out of the speedup. Each finished question is one
appended line; `--resume` skips the question ids a method already has.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .baselines import Baseline, check_baselines
from .distributed import Ranks, launched_ranks
from .drafters.base import Drafter
from .inputs import check_eval_inputs, check_prompts_fit, model_context
from .progress import progress_bar
from .quiet_gc import collector_paused, frozen_heap
from .registry import DRAFTERS
from .types import Generation, MethodSetup, SpecbenchError

ENGINES = ("auto", "eager", "compiled")

# Top-level config.json settings that must match when a run is resumed (see `provenance`).
RESUME_KEYS = (
    "model",
    "draft_model",
    "max_new_tokens",
    "temperature",
    "dtype",
    "device",
    "seed",
    "engine",
    "limit",
    "prompt_format",
    "max_turns",
)
# What a config.json written before a setting existed meant by it (a resumed older run keeps it).
RESUME_DEFAULTS = {"prompt_format": "chat", "max_turns": None}
# Provenance keys that belong to one method or datastore: compared only when both runs have them,
# because methods (and the datastores they bring) may be added on resume, or left out of one.
SCOPED_PREFIXES = ("method_options[", "datastore[")


@dataclass
class EvalConfig:
    model: str
    suites: list[str]
    methods: list[str]
    out: Path
    baselines: list[str] = field(default_factory=list)  # transformers' own generate (baselines.py)
    draft_model: str | None = None
    draft_head: Path | None = (
        None  # an EAGLE head folder (`specbench train-head`): eagle2, and the hybrids' host
    )
    datastores: list[Path] = field(default_factory=list)
    limit: int | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    warmup: int = 1
    engine: str = "auto"
    draft_compile: str = (
        "default"  # compiled engine: torch.compile mode of draft models, "none" = graphs only
    )
    force_datastore: bool = False
    threads: int | None = None
    repeats: int = 1  # passes over the questions, methods interleaved in each (spread in the report)
    prompt_format: str = "chat"  # prompts.PROMPT_FORMATS: chat template, or DReSD's Question/Answer
    max_turns: int | None = None  # answer only each question's first N turns (MT-Bench turn 1: 1)
    command: str = ""  # the command line as typed (the report page shows it)
    method_options: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["datastores"] = [str(p) for p in self.datastores]
        d["draft_head"] = str(self.draft_head) if self.draft_head else None
        return d


def method_name(label: str) -> str:
    """`sam@pld` -> `sam`: a label runs a registered method under its own name and `--method-opt`s, so
    one run can hold a method twice (e.g. `--methods sam,sam@pld --method-opt sam@pld.fallback=pld`)."""
    name, _, tag = label.partition("@")
    if "@" in label and not tag:
        raise SpecbenchError(f"method label '{label}' has an empty tag; use METHOD@TAG, e.g. sam@pld")
    return name


def parse_method_options(items: list[str]) -> dict[str, dict]:
    """`--method-opt pld.num_pred=8` -> {"pld": {"num_pred": 8}} (ints, floats, true/false parsed)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise SpecbenchError(f"bad --method-opt '{item}'; expected METHOD.KEY=VALUE, e.g. pld.num_pred=8")
        DRAFTERS.check(method_name(method))
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        if raw.lower() in ("true", "false", "on", "off"):
            value = raw.lower() in ("true", "on")
        out.setdefault(method, {})[name] = value
    return out


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecbenchError(f"--device {device}: no CUDA device is available here; use --device cpu")
    index = device.partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise SpecbenchError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SpecbenchError(f"unknown --device '{device}'; choose from: auto, cpu, cuda, cuda:N")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise SpecbenchError(f"unknown --dtype '{dtype}'; choose from: auto, float32, float16, bfloat16")
    return device, dtype


def validate_cheap(cfg: EvalConfig) -> None:
    """Checks that need no model: run before anything heavy is loaded."""
    check_eval_inputs(cfg)  # numbers, names and the --out folder (inputs.py)
    if not cfg.methods:
        raise SpecbenchError("--methods is empty; choose from: " + ", ".join(DRAFTERS.names()))
    for m in cfg.methods:
        DRAFTERS.check(method_name(m))
    if len(set(cfg.methods)) != len(cfg.methods):
        raise SpecbenchError(f"--methods lists a method twice: {','.join(cfg.methods)}")
    if cfg.draft_compile not in ("default", "none"):
        raise SpecbenchError(f"unknown --draft-compile '{cfg.draft_compile}'; choose from: default, none")
    if cfg.engine not in ENGINES:
        raise SpecbenchError(f"unknown --engine '{cfg.engine}'; choose from: {', '.join(ENGINES)}")
    if cfg.out.exists() and not cfg.resume:
        raise SpecbenchError(
            f"run folder {cfg.out} already exists; pass --resume to continue it or choose another --out"
        )
    for m in cfg.method_options:
        if m not in cfg.methods:
            raise SpecbenchError(f"--method-opt names method '{m}', which is not in --methods")
    for m in cfg.methods:  # typed options: a misspelt key or a bad value stops here, before any load
        DRAFTERS.get(method_name(m)).check_options(
            cfg.method_options.get(m, {}), bool(cfg.draft_model), bool(cfg.draft_head)
        )
    check_baselines(cfg.baselines)
    if cfg.baselines and cfg.temperature > 0:
        raise SpecbenchError("--baselines run greedy transformers generate; use them with --temperature 0")


def provenance(config: dict) -> dict[str, Any]:
    """Everything in a config.json that changes a number, one comparable value per key.

    Warm-up, threads and --force-datastore are left out: they change no recorded number. Suites are
    keyed by label, so a different question file under the same name is caught by its sha256.
    """
    prov: dict[str, Any] = {key: config.get(key, RESUME_DEFAULTS.get(key)) for key in RESUME_KEYS}
    suites = config.get("suites_info") or []
    prov["suites"] = sorted(str(s.get("name")) for s in suites)
    for s in suites:
        for key in ("source", "sha256", "questions"):
            prov[f"suite[{s.get('name')}].{key}"] = s.get(key)
    options = config.get("method_options") or {}
    for m in config.get("methods") or []:
        prov[f"method_options[{m}]"] = options.get(m, {})
    for kind, info in (config.get("datastores_info") or {}).items():
        prov[f"datastore[{kind}]"] = {key: info.get(key) for key in ("path", "manifest_sha256")}
    return prov


def provenance_mismatch(old: dict, new: dict, final: bool = True) -> tuple[str, Any, Any] | None:
    """The first (key, old value, new value) where two configs' provenance differs, or None.

    With `final` False (the check before the model loads) a new value "auto" is skipped: it is
    resolved later and compared again, resolved, right before config.json is written.
    """
    mine, theirs = provenance(new), provenance(old)
    for key in list(dict.fromkeys([*theirs, *mine])):
        if key.startswith(SCOPED_PREFIXES) and (key not in mine or key not in theirs):
            continue
        if not final and mine.get(key) == "auto":
            continue
        if theirs.get(key) != mine.get(key):
            return key, theirs.get(key), mine.get(key)
    return None


def read_run_config(out: Path) -> dict | None:
    """The config.json of an existing run folder; None when the folder holds no run yet."""
    import json

    path = out / "config.json"
    if not path.exists() and not (out / "answers").exists():
        return None  # nothing written yet (e.g. a run killed while its model loaded)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SpecbenchError(
            f"--resume: {out} has no readable config.json ({e.__class__.__name__})"
        ) from None


def check_resume(out: Path, config: dict, final: bool = True) -> dict | None:
    """A resumed run must keep every setting that changes the numbers (methods may be added).

    Refuses with one line naming the first setting that differs, its old and its new value; returns
    the old config (None for a folder without a run yet).
    """
    old = read_run_config(out)
    if old is None:
        return None
    diff = provenance_mismatch(old, config, final)
    if diff is not None:
        key, was, now = diff
        raise SpecbenchError(f"--resume: {key} was {was!r} in {out}, now {now!r}; use another --out")
    return old


def carry_forward(config: dict, old: dict | None) -> dict:
    """The config to write on resume: this run's, plus what earlier runs recorded for methods and
    datastores that this one left out (their answers stay in the folder, so must their settings)."""
    if old is None:
        return config
    merged = dict(config)
    for key in ("methods", "baselines"):
        merged[key] = list(dict.fromkeys((old.get(key) or []) + (config.get(key) or [])))
    for key in ("method_options", "methods_params", "lossless_methods", "datastores_info"):
        merged[key] = {**(old.get(key) or {}), **(config.get(key) or {})}
    # Repeats may be added on resume; answers of the earlier, higher count stay in the folder.
    merged["repeats"] = max(int(old.get("repeats") or 1), int(config.get("repeats") or 1))
    earlier = old.get("commands") or [old.get("command") or ""]
    merged["commands"] = [c for c in earlier if c] + [config.get("command") or ""]
    return merged


def base_config(cfg: EvalConfig, device: str, dtype: str, suites, stores: dict[str, Path]) -> dict:
    """What config.json records before any model loads (provenance is checked on this first)."""
    from .datastores.manifest import manifest_sha256

    return cfg.to_json() | {
        "device": device,
        "dtype": dtype,
        "suites_info": [
            {"name": s.name, "source": s.source, "sha256": s.sha256, "questions": len(s.questions)}
            for s in suites
        ],
        "datastores_info": {
            k: {"path": str(p), "manifest_sha256": manifest_sha256(p)} for k, p in stores.items()
        },
    }


def resolve_engine(requested: str, device: str, models: list) -> tuple[str, str]:
    """`--engine auto`: compiled on CUDA for architectures the compiled runner takes, eager elsewhere.
    Returns the engine and the reason, both printed in the run header and kept in config.json."""
    from .engine.compiled import COMPILED_ARCHITECTURES

    archs = [str(getattr(m.model.config, "model_type", "?")) for m in models]
    unsupported = sorted({a for a in archs if a not in COMPILED_ARCHITECTURES})
    if requested == "eager":
        return "eager", "--engine eager"
    if requested == "compiled":
        if unsupported:
            raise SpecbenchError(
                f"--engine compiled does not support architecture {', '.join(unsupported)} (it supports "
                f"{', '.join(COMPILED_ARCHITECTURES)}); use --engine eager"
            )
        return "compiled", "--engine compiled"
    if not device.startswith("cuda"):
        return "eager", "auto: no CUDA device (the compiled engine replays CUDA graphs)"
    if unsupported:
        return "eager", f"auto: the compiled runner does not support architecture {', '.join(unsupported)}"
    return "compiled", f"auto: CUDA device and a supported architecture ({', '.join(sorted(set(archs)))})"


def datastores_by_method(paths: list[Path]) -> dict[str, Path]:
    from .datastores.manifest import read_manifest

    found: dict[str, Path] = {}
    for p in paths:
        method = read_manifest(p)["method"]
        if method in found:
            raise SpecbenchError(f"two --datastore folders serve method '{method}': {found[method]} and {p}")
        found[method] = p
    return found


def first_turns(suites, max_turns: int):
    """`--max-turns N`: every question cut to its first N turns (the suites' files and sha256 stay the
    same; config.json's max_turns tells the runs apart)."""
    from dataclasses import replace

    for s in suites:
        s.questions = [replace(q, turns=q.turns[:max_turns]) for q in s.questions]
    return suites


def run_header_prompt(cfg: EvalConfig) -> str:
    """What the run header says the model is asked: prompt layout and turns answered."""
    layout = 'plain "Question: ...\\nAnswer:\\n"' if cfg.prompt_format == "plain" else "chat template"
    turns = "all turns" if cfg.max_turns is None else f"first {cfg.max_turns} turn(s)"
    return f"prompt: {layout}, {turns}"


def prompt_lengths(suites, tokenizer, prompt_format: str = "chat") -> list[tuple[str, Any, int, int]]:
    """(suite label, question id, prompt tokens of all its turns with empty answers, turns) per question."""
    from .prompts import build_prompt_ids

    out = []
    for s in suites:
        for q in s.questions:
            turns = list(q.turns)
            prompt = len(build_prompt_ids(tokenizer, turns, [""] * (len(turns) - 1), prompt_format))
            out.append((s.name, q.question_id, prompt, len(turns)))
    return out


def cache_length(lengths: list[tuple[str, Any, int, int]], max_new_tokens: int, max_nodes: int) -> int:
    """Slots a static cache needs for the longest conversation of the run (every turn's question,
    every answer at full length, chat-template overhead; `prompt_lengths`), rounded up to 256."""
    longest = max((prompt + max_new_tokens * turns for _, _, prompt, turns in lengths), default=0)
    needed = longest + max_nodes + 2
    return -(-needed // 256) * 256


def question_seed(seed: int, question_id, turn: int) -> int:
    digest = hashlib.sha256(f"{seed}:{question_id}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def run_turn(
    engine, drafter, prompt_ids, max_new_tokens, temperature=0.0, generator=None, margins=False
) -> Generation:
    """One turn through our decode loop, or through transformers' generate for a baseline.
    `margins`: record the top-1/top-2 logit margin per output token (done for `ar`, the reference)."""
    from .engine.decode import generate

    if isinstance(drafter, Baseline):
        return drafter.generate(prompt_ids, max_new_tokens)
    return generate(engine, drafter, prompt_ids, max_new_tokens, temperature, generator, margins)


def answer_question(
    engine, drafter, tokenizer, question, cfg: EvalConfig, device: str, margins: bool = False
) -> tuple[dict, list[Generation]]:
    import torch

    from .prompts import build_prompt_ids

    answers: list[str] = []
    gens: list[Generation] = []
    method = drafter if isinstance(drafter, Drafter) else None  # baselines report no method stats
    if method is not None:
        method.clear_stats()
    for turn in range(len(question.turns)):
        prompt_ids = build_prompt_ids(tokenizer, list(question.turns[: turn + 1]), answers, cfg.prompt_format)
        gen = None
        if cfg.temperature > 0:
            gen = torch.Generator(device=device)
            gen.manual_seed(question_seed(cfg.seed, question.question_id, turn))
        g = run_turn(engine, drafter, prompt_ids, cfg.max_new_tokens, cfg.temperature, gen, margins)
        gens.append(g)
        answers.append(tokenizer.decode(g.output_ids, skip_special_tokens=True))
    steps = [s for g in gens for s in g.steps]
    choice = {
        "index": 0,
        "turns": answers,
        "new_tokens": [g.new_tokens for g in gens],
        "wall_time": [g.wall_time for g in gens],
        "decoding_steps": [len(g.steps) for g in gens],
        "accept_lengths": [s.committed for s in steps],
        "draft_nodes": [s.draft_nodes for s in steps],
        "draft_depth": [s.draft_depth for s in steps],
        "accepted": [s.accepted for s in steps],
        "t_draft": [s.t_draft for s in steps],
        "t_verify": [s.t_verify for s in steps],
        "t_other": [s.t_other for s in steps],
        "draft_forwards": [s.draft_forwards for s in steps],
        "prefill_time": [g.prefill_time for g in gens],
        "output_ids": [g.output_ids for g in gens],
        "stop_reason": [g.stop_reason for g in gens],
        "method_stats": method.stats() if method is not None else {},  # the method's own counters
    }
    if any(s.draft_forwards for s in steps):  # the report prices each draft forward at its size
        choice["draft_forward_inputs"] = [s.draft_forward_inputs for s in steps]
    if any(s.t_draft_forward is not None for s in steps):  # draft runners on CUDA graphs
        choice["t_draft_forward"] = [s.t_draft_forward or 0.0 for s in steps]
    if margins:  # `ar` only: where another method's ids differ, how close ar's own choice was
        choice["top1_logit"] = [[_short(x) for x in g.top1_logits or []] for g in gens]
        choice["top2_margin"] = [[_short(x) for x in g.top2_margins or []] for g in gens]
    return choice, gens


def graph_captures(engine) -> int:
    """CUDA graphs captured so far by the run's runners (the target's and every draft network's) and
    by dense-store searches (each capture followed by its graph-vs-eager timing, ~40 searches)."""
    from .datastores.torch_index import captures_made

    return sum(runner.captures for _, runner in engine.runners.made) + captures_made()


def _short(x: float) -> float:
    # Five significant digits: enough for a margin against a rounding bound, and a compact line.
    return float(f"{x:.5g}")


def run_eval(cfg: EvalConfig, console) -> Path:
    # The run-folder lock is taken part-way through (after the cheap checks) and held to the end.
    validate_cheap(cfg)  # before torch is imported: a typo answers at once
    ranks = launched_ranks()  # under torchrun: this process's share of the questions (distributed.py)
    with ExitStack() as hold:
        return _run_eval(cfg, console, hold, ranks)


def _run_eval(cfg: EvalConfig, console, hold: ExitStack, ranks: Ranks | None = None) -> Path:
    import torch
    from rich.console import Console

    from . import distributed
    from .datastores.manifest import check_datastore, prompt_format_mismatch
    from .engine.costs import probe_costs
    from .engine.decode import DEFAULT_MAX_NODES, Engine
    from .engine.row_topk import topk_kind
    from .env import collect_env
    from .models import load_model, tokenizer_fingerprint
    from .prompts import build_prompt_ids
    from .report import make_report
    from .results import RunPaths, append_answer, run_folder_lock, write_json_atomic
    from .scoring.scores import scorable, score_answer, score_missing
    from .suites import load_suites

    config_device, dtype = resolve_device(cfg.device, cfg.dtype)
    device = distributed.rank_device(ranks, config_device)  # cuda:LOCAL_RANK under torchrun
    if ranks is not None:
        distributed.start(ranks, device)
        hold.callback(distributed.stop)
        if not ranks.lead:
            console = Console(quiet=True)  # one progress display: rank 0's
    if cfg.threads is not None:  # bounded by inputs.max_threads()
        torch.set_num_threads(cfg.threads)
    suites = load_suites(cfg.suites, cfg.limit, cfg.seed)  # labels unique: one answer folder each
    if cfg.max_turns is not None:
        suites = first_turns(suites, cfg.max_turns)
    for s in suites:
        if not s.questions:
            raise SpecbenchError(f"suite '{s.name}' has no questions")
    classes = {m: DRAFTERS.get(method_name(m)) for m in cfg.methods}
    needs_draft = [
        m for m, c in classes.items() if c.needs_draft_model and not (c.host_on_draft_head and cfg.draft_head)
    ]
    if needs_draft and not cfg.draft_model:
        raise SpecbenchError(f"method(s) {', '.join(needs_draft)} need --draft-model")
    needs_head = [m for m, c in classes.items() if c.needs_draft_head]
    if needs_head and not cfg.draft_head:
        raise SpecbenchError(
            f"method(s) {', '.join(needs_head)} need --draft-head DIR (from `specbench train-head`)"
        )
    if cfg.draft_head is not None:
        from .head.model import read_manifest

        read_manifest(cfg.draft_head)  # a folder that is no head fails here, before anything loads
    stores = datastores_by_method(cfg.datastores)
    for m, c in classes.items():
        if c.datastore_kind and c.datastore_kind not in stores:
            raise SpecbenchError(
                f"method '{m}' needs a datastore: build one with `specbench build-index --method "
                f"{c.datastore_kind}` and pass it with --datastore DIR"
            )

    # Cheap checks passed: claim the folder (created here if new, removed again if the run fails
    # before its first write) and hold it while the model loads, so no second eval can interleave.
    # Under torchrun only rank 0 locks the folder and writes config.json and env.json.
    lead = ranks is None or ranks.lead
    # The draft head is recorded like a datastore (path + manifest sha256: what --resume compares).
    head_store = {"draft-head": cfg.draft_head} if cfg.draft_head else {}
    config = base_config(cfg, config_device, dtype, suites, stores | head_store)
    config["world_size"] = ranks.world if ranks else 1

    def claim() -> None:
        hold.enter_context(run_folder_lock(cfg.out, cfg.resume))
        if cfg.resume:
            check_resume(cfg.out, config, final=False)  # before the slow model load

    distributed.lead_step(ranks, claim)

    console.print(f"loading {cfg.model} ({dtype}, {device}); {run_header_prompt(cfg)}", highlight=False)
    target = load_model(cfg.model, dtype=dtype, device=device)
    draft = load_model(cfg.draft_model, dtype=dtype, device=device) if cfg.draft_model else None
    if draft is not None and tokenizer_fingerprint(draft.tokenizer) != tokenizer_fingerprint(
        target.tokenizer
    ):
        raise SpecbenchError(f"--draft-model {cfg.draft_model} has a different tokenizer from {cfg.model}")
    lengths = prompt_lengths(suites, target.tokenizer, cfg.prompt_format)  # the first check needing the model
    context = model_context(target.model.config)
    check_prompts_fit(lengths, cfg.max_new_tokens, cfg.model, context)
    fingerprint = tokenizer_fingerprint(target.tokenizer)
    store_notes = {}
    for kind, path in stores.items():
        mismatch = prompt_format_mismatch(path, cfg.prompt_format)
        if mismatch:
            console.print(f"warning: {mismatch}", highlight=False)
        for s in suites:
            store_notes[f"{kind}:{s.name}"] = check_datastore(
                path, kind, fingerprint, s.name, s.sha256, cfg.force_datastore
            )
    if cfg.draft_head is not None:
        from .head.model import check_head_for_eval

        # Another target's head, or one trained on an evaluated suite, is refused here.
        store_notes["draft-head:all"] = check_head_for_eval(
            cfg.draft_head, target, suites, cfg.force_datastore
        )

    engine_kind, engine_reason = resolve_engine(cfg.engine, device, [m for m in (target, draft) if m])
    console.print(f"engine: {engine_kind} ({engine_reason})", highlight=False)
    max_len = cache_length(lengths, cfg.max_new_tokens, DEFAULT_MAX_NODES)
    draft_mode = None if cfg.draft_compile == "none" else cfg.draft_compile
    engine = Engine(target, max_len=max_len, kind=engine_kind, draft_compile_mode=draft_mode)
    drafters = {}
    for m, cls in classes.items():
        setup = MethodSetup(
            target=target,
            draft=draft,
            datastores=stores,
            options=cfg.method_options.get(m, {}),
            temperature=cfg.temperature,
            seed=cfg.seed,
            runners=engine.runners,  # draft models run on the target's execution path
            draft_head=cfg.draft_head,
        )
        drafters[m] = cls(setup)

    # Everything checked: from here on the run folder is written.
    paths = RunPaths(cfg.out)
    config |= {
        "engine": engine_kind,  # resolved: what the resume check compares
        "engine_requested": cfg.engine,
        "engine_reason": engine_reason,
        "methods_params": {m: d.describe() for m, d in drafters.items()},
        "lossless_methods": {m: bool(d.lossless) for m, d in drafters.items()},
    }
    for kind, info in config["datastores_info"].items():
        info["check"] = {k: v for k, v in store_notes.items() if k.startswith(f"{kind}:")}
    if lead:
        old = check_resume(cfg.out, config) if cfg.resume else None  # again, on resolved values
        config = carry_forward(config, old)
        write_json_atomic(paths.config, config)
        env = collect_env(
            [m for m in (target, draft) if m is not None],
            [Path(s.source) for s in suites if Path(s.source).is_file()],
            {"seed": cfg.seed},
            dtype,
            device,
        )
        write_json_atomic(paths.env, env)

    # Baselines run like methods from here on (same questions, interleaving and answer files).
    drafters |= {b: Baseline(b, target, static_len=max_len) for b in cfg.baselines}
    names = cfg.methods + cfg.baselines
    torch.manual_seed(cfg.seed)
    if cfg.warmup > 0:
        # Warm-up on the first question (not recorded): allocator, kernels and lazy init settle first.
        q0 = suites[0].questions[0]
        ids = build_prompt_ids(target.tokenizer, [q0.turns[0]], [], cfg.prompt_format)
        for m in names:
            for _ in range(cfg.warmup):
                run_turn(engine, drafters[m], ids, min(cfg.max_new_tokens, 32))
                if m in cfg.baselines:  # a second prompt length: transformers' recompile, off the clock
                    run_turn(engine, drafters[m], ids[: max(1, len(ids) - 7)], min(cfg.max_new_tokens, 32))
        if lead:  # what a target step, a verification and a draft step cost on its runners (report: c)
            config["forward_costs"] = probe_costs(engine, ids, reps=10 if device.startswith("cuda") else 3)
        for _, runner in engine.runners.made:  # every graph a timed answer could need, captured now
            runner.prepare_seen()
        if lead:  # the costs, and how the target compacts an accepted path (known once its graphs exist)
            config["kv_compaction"] = engine.runner.move_kind
            # Described again now that each drafter has run: what only a first use settles (a dense
            # search's CUDA graph or eager form, chosen by timing both) is what the timed answers ran.
            config["methods_params"] |= {m: drafters[m].describe() for m in cfg.methods}
            # Token Recycling's per-input top-k, over the target's logits (in the model's dtype)
            config["node_topk"] = topk_kind(engine.runner.device, engine.runner.dtype)
            write_json_atomic(paths.config, config)

    # Each repeat is one pass over the questions (Spec-Bench's runs), methods interleaved per question.
    # Drafters that learn across answers (Token Recycling's matrix, SuffixDecoding's cross-request tree)
    # start every pass from nothing, whatever the warm-up or an earlier pass taught them, so a repeat
    # never drafts from its own question's earlier answer. On --resume they relearn the answers already
    # written, in run order (Token Recycling's matrix cannot be rebuilt from them).
    # Done answers are read from the merged files and every rank folder, so a run resumed with another
    # number of processes answers nothing twice; under torchrun this process takes its share of the
    # questions (distributed.py), the same share in every pass.
    plan = []  # (suite, question, repeat, method, answer already written or None), in run order
    done = {(s.name, m): distributed.done_answers(paths, s.name, m) for s in suites for m in names}
    mine = distributed.my_share([(s, q) for s in suites for q in s.questions], ranks)
    for r in range(cfg.repeats):
        for s, q in mine:
            plan += [(s, q, r, m, done[s.name, m].get((q.question_id, r))) for m in names]
    total = len(plan)
    todo = [step for step in plan if step[4] is None]
    if ranks is not None:
        console.print(f"rank 0 of {ranks.world}: {len(mine)} questions; every rank writes answers/.rank<R>/")
    console.print(
        f"{total - len(todo)} of {total} answers already done" if cfg.resume else f"{total} answers to make"
    )

    rank_files = distributed.rank_paths(paths, ranks)  # under torchrun: this rank's own files
    live = {m: [0, 0, 0.0] for m in names}  # tokens, steps, seconds
    scored_programs: dict[tuple[str, str], dict] = {}  # (suite, method) -> program -> its score line
    progress = progress_bar("[bold]{task.description}", "{task.fields[stats]}", console, transient=False)
    with progress, frozen_heap():  # the collector off the clock (quiet_gc.py)
        task = progress.add_task("eval", total=total, completed=total - len(todo), stats="")
        started = None
        for s, q, r, m, written in plan:
            if r != started:  # a new pass: drafters that learn across answers start from nothing
                started = r
                for name in cfg.methods:
                    drafters[name].start_run()
            if written is not None:
                if m in cfg.methods:
                    for output_ids in written["choices"][0]["output_ids"]:
                        drafters[m].finish_answer(output_ids)
                continue
            progress.update(task, description=f"{s.name} {m}" + (f" #{r + 1}" if cfg.repeats > 1 else ""))
            margins = m == "ar"  # the reference of the lossless check (report.metrics.BASELINE)
            captured = graph_captures(engine)
            with collector_paused():
                choice, gens = answer_question(engine, drafters[m], target.tokenizer, q, cfg, device, margins)
            captured = graph_captures(engine) - captured
            if captured:  # its time includes a capture (and maybe a compilation): the report lists it
                choice["graph_captures"] = captured
                console.print(
                    f"warning: {s.name} {m} question {q.question_id}: {captured} CUDA graph(s) captured on the clock",
                    markup=False,
                    highlight=False,
                )
            record = {
                "question_id": q.question_id,
                "category": q.category,
                "answer_id": uuid.uuid4().hex,
                "model_id": cfg.model,
                "method": m,
                "suite": s.name,
                # per instance: whether ReSpec is lossy depends on its options
                "lossless_method": bool(drafters[m].lossless),
                "baseline": m in cfg.baselines,  # transformers' generate: a reference, not a method
                "tstamp": time.time(),
                "repeat": r,
                "choices": [choice],
            }
            append_answer(rank_files.answers_file(s.name, m), record)
            if scorable(q):  # HumanEval: pass/fail in the sandbox now, so the report runs nothing
                reuse = scored_programs.setdefault((s.name, m), {})  # repeats: one sandbox run per program
                append_answer(rank_files.scores_file(s.name, m), score_answer(q, record, reuse=reuse))
            if m in cfg.methods:  # only now, written, may an answer teach a cross-request drafter
                for g in gens:
                    drafters[m].finish_answer(g.output_ids)
            acc = live[m]
            acc[0] += sum(g.new_tokens for g in gens)
            acc[1] += sum(len(g.steps) for g in gens)
            acc[2] += sum(g.wall_time for g in gens)
            stats = "  ".join(
                f"{k}: {v[0] / max(v[2], 1e-9):.1f} tok/s, MAT {v[0] / max(v[1], 1):.2f}"
                for k, v in live.items()
                if v[1]
            )
            progress.update(task, advance=1, stats=stats)
    if ranks is not None:
        distributed.wait_all()  # every rank's share written
        if not ranks.lead:
            return paths.root
    # Rank files (this run's, or an earlier torchrun run's that this one resumed) join the answer files.
    distributed.merge_rank_files(paths, {s.name: [q.question_id for q in s.questions] for s in suites})
    score_missing(paths, {s.name: s.questions for s in suites})  # answers of an interrupted run
    make_report(paths.root, console=console)
    return paths.root
