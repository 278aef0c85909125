"""The `specbench` command line: thin wrappers that parse, then call the module that does the work.

Heavy libraries (torch, transformers, faiss, pandas) are imported inside the command bodies, so
`specbench --help` and `specbench ls` answer instantly.
"""

from __future__ import annotations

import errno
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from .types import SpecbenchError

try:  # recent typer ships its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors

DEBUG_ENV = "SPECBENCH_DEBUG"  # =1: print the traceback of any error (same as --debug)
show_tracebacks = False  # --debug


class OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing or unknown option) as one `error:` line, exit 2,
    instead of click's boxed usage text, so every bad input reads the same way."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError:
            code = super().main([], standalone_mode=True)  # plain `specbench`: typer's own help
        except click_errors.ClickException as e:
            print_error(e.format_message() + typed_value(e))
            code = e.exit_code
        except click_errors.Abort:
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help=(
        "Benchmark retrieval-based speculative decoding: which drafting method makes a model faster "
        "on a workload, by how much, and is the output unchanged?\n\n"
        "Quick start: [bold]specbench eval --model smollm2-135m --suite mt-bench --methods ar,pld "
        "--limit 3 --out results/try[/bold]"
    ),
)
console = Console(stderr=True)
if not console.is_terminal:
    # Logs and CI: rich would assume 80 columns and squeeze the summary table unreadably.
    console = Console(stderr=True, width=160)


def stdout_console() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=160)


@app.callback()
def global_options(
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help="Print the traceback of an error too.")
    ] = False,
) -> None:
    """Options before the command, e.g. `specbench --debug eval ...`."""
    global show_tracebacks
    show_tracebacks = debug  # set on every call, so in-process runs (tests) do not leak it


def print_error(message: str, label: str = "error") -> None:
    # One line whatever the message holds; escape: `method_options[pld]` must not be read as markup.
    line = " ".join(str(message).split())
    console.print(f"[red]{label}:[/red] {escape(line)}", highlight=False, soft_wrap=True)


def typed_value(e: Exception) -> str:
    """The text the user typed, when a type check (pydantic, in recent typer) rejected it."""
    errors = getattr(e.__cause__, "errors", None)
    try:
        value = errors()[0]["input"] if callable(errors) else None
    except (LookupError, TypeError, ValueError):
        value = None
    return f" (got {str(value)[:60]!r})" if value is not None else ""


def os_error_message(e: OSError, resumable: bool) -> str:
    what = f"{e.strerror or e.__class__.__name__}: {e.filename}" if e.filename else str(e)
    if resumable and e.errno == errno.ENOSPC:
        what += "; finished answers are saved: free some space and rerun with --resume"
    return what


@contextmanager
def user_errors(resumable: bool = False):
    """The CLI's error boundary; every command body runs inside it.

    SpecbenchError (bad input) and OSError (a folder that cannot be written, a full disk): one line,
    exit 2. Anything else is a bug in specbench: one line naming the exception, exit 1. Ctrl-C: a
    resumable stop, exit 130 (answers are appended one fsync'd line at a time, so none is lost).
    --debug or SPECBENCH_DEBUG=1 prints the traceback before the line.
    """
    try:
        yield
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/yellow]: finished answers are saved; rerun with --resume to continue"
        )
        raise typer.Exit(130) from None
    except Exception as e:
        if show_tracebacks:
            console.print_exception(show_locals=False)
        if isinstance(e, SpecbenchError):
            print_error(str(e))
            raise typer.Exit(2) from None
        if isinstance(e, OSError):
            print_error(os_error_message(e, resumable))
            raise typer.Exit(2) from None
        hint = "" if show_tracebacks else f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"
        print_error(f"{e.__class__.__name__}: {str(e)[:300]}{hint}", label="internal error")
        raise typer.Exit(1) from None


def split_csv(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command("ls")
def ls_command(
    method: Annotated[
        str | None, typer.Option(help="Show this method's options (--method-opt METHOD.KEY=VALUE).")
    ] = None,
) -> None:
    """List methods, datastore kinds, suites and model aliases, one line each; or one method's options."""
    from .models import ALIASES
    from .registry import DATASTORES, DRAFTERS, SUITES

    out = stdout_console()
    if method is not None:
        with user_errors():
            print_method_options(out, method)
        return
    for title, registry in (("methods", DRAFTERS), ("datastore kinds", DATASTORES), ("suites", SUITES)):
        out.print(f"[bold]{title}[/bold]")
        for name in registry.names():
            out.print(f"  {name:<12} {registry.describe(name)}", highlight=False)
    out.print("[bold]models[/bold]")
    for name, desc in ALIASES.items():
        out.print(f"  {name:<20} {desc}", highlight=False)


def print_method_options(out: Console, method: str) -> None:
    """`ls --method NAME`: the method's options (from its options dataclass) and its statistics."""
    from rich.table import Table

    from .options import describe_options
    from .registry import DRAFTERS

    cls = DRAFTERS.get(method)
    out.print(f"[bold]{method}[/bold]: {DRAFTERS.describe(method)}", highlight=False)
    needs = [
        ("--draft-model" + (" (or --draft-head)" if cls.host_on_draft_head else ""), cls.needs_draft_model),
        ("--draft-head", cls.needs_draft_head),
        (f"--datastore ({cls.datastore_kind})", cls.datastore_kind),
    ]
    needs_text = ", ".join(flag for flag, needed in needs if needed) or "nothing else"
    out.print(f"needs {needs_text}; {'lossless' if cls.lossless else 'lossy'}", highlight=False)
    rows = describe_options(cls.options_class)
    if not rows:
        out.print(f"{method} takes no options")
    else:
        table = Table(title=f"options: --method-opt {method}.KEY=VALUE", title_style="bold")
        for col in ("name", "type", "default", "help", "source"):
            table.add_column(col)
        for row in rows:
            table.add_row(
                row["name"], option_type(row), option_value(row["default"]), row["help"], row["source"]
            )
        out.print(table)
    for head in cls.nested_options:
        out.print(
            f"{method}.{head}.KEY=VALUE goes to the {head} method (see its `ls --method`)", highlight=False
        )
    if cls.stat_names:
        out.print("[bold]statistics[/bold] (summed per answer, `method_stats` in the answers)")
        for name, what in cls.stat_names.items():
            out.print(f"  {name:<24} {what}", highlight=False)


def option_type(row: dict) -> str:
    """`int >= 1`, `str: auto | pld`: the type with its allowed values."""
    text = row["type"]
    if row["choices"]:
        text += ": " + " | ".join(option_value(c) for c in row["choices"])
    if row["minimum"] is not None:
        text += f" >= {row['minimum']}"
    return text


def option_value(value: object) -> str:
    """A default as it is typed on the command line (true/false, none)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@app.command("eval")
def eval_command(
    model: Annotated[
        str, typer.Option(help="Target model: alias, Hugging Face id, local folder or .gguf file.")
    ],
    suite: Annotated[list[str], typer.Option(help="Suite NAME[:PATH][#CATEGORY]; repeat or comma-separate.")],
    out: Annotated[Path, typer.Option(help="Run folder, e.g. results/RUN.")],
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated methods (see `specbench ls`); METHOD@TAG runs a method again under its own --method-opt, e.g. sam@pld."
        ),
    ] = "ar,pld",
    baselines: Annotated[
        str,
        typer.Option(
            help="Comma-separated transformers baselines run beside the methods: hf-eager, hf-static."
        ),
    ] = "",
    draft_model: Annotated[str | None, typer.Option(help="Draft model for sps (same tokenizer).")] = None,
    draft_head: Annotated[
        Path | None,
        typer.Option(help="EAGLE head folder from train-head: eagle2, and the host tree of rasd/respec."),
    ] = None,
    datastore: Annotated[
        list[Path] | None, typer.Option(help="Datastore folder from build-index; repeatable.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Questions per suite (spread over categories).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per turn.")] = 256,
    temperature: Annotated[
        float, typer.Option(help="0 = greedy; > 0 samples (distribution-preserving).")
    ] = 0.0,
    dtype: Annotated[
        str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16.")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for sampling and suite subsets.")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue an existing run folder, skipping finished questions.")
    ] = False,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up generations per method.")] = 1,
    engine: Annotated[
        str,
        typer.Option(
            help="auto (compiled on CUDA for supported architectures, else eager), eager (any model) or "
            "compiled (static cache + CUDA graphs for the target and draft models; Llama/Qwen2/Qwen3/Mistral)."
        ),
    ] = "auto",
    draft_compile: Annotated[
        str,
        typer.Option(
            help="Compiled engine: default (torch.compile draft models too) or none (CUDA graphs only, "
            "no compile time: each draft forward launches more kernels)."
        ),
    ] = "default",
    method_opt: Annotated[
        list[str] | None, typer.Option(help="METHOD.KEY=VALUE override, e.g. pld.num_pred=8.")
    ] = None,
    force_datastore: Annotated[
        bool, typer.Option(help="Use a datastore even if it overlaps the suite (reported).")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch (default: torch's choice).")
    ] = None,
    repeats: Annotated[
        int,
        typer.Option(
            help="Passes over the questions (methods interleaved in each); the report gives their spread."
        ),
    ] = 1,
    prompt_format: Annotated[
        str,
        typer.Option(
            help="chat (the tokenizer's chat template, Question/Answer without one) or plain "
            '("Question: ...\\nAnswer:\\n" for every model, as the DReSD paper prompts).'
        ),
    ] = "chat",
    max_turns: Annotated[
        int | None,
        typer.Option(help="Answer only each question's first N turns (MT-Bench turn 1: --max-turns 1)."),
    ] = None,
) -> None:
    """Run suites across drafting methods and write answers, env and the report into --out."""
    with user_errors(resumable=True):
        from .evaluate import EvalConfig, parse_method_options, run_eval

        cfg = EvalConfig(
            model=model,
            suites=split_csv(suite),
            methods=split_csv([methods]),
            out=out,
            baselines=split_csv([baselines]),
            draft_model=draft_model,
            draft_head=draft_head,
            datastores=list(datastore or []),
            limit=limit,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            dtype=dtype,
            device=device,
            seed=seed,
            resume=resume,
            warmup=warmup,
            engine=engine,
            draft_compile=draft_compile,
            force_datastore=force_datastore,
            threads=threads,
            repeats=repeats,
            prompt_format=prompt_format,
            max_turns=max_turns,
            command=shlex.join(["specbench", *sys.argv[1:]]),
            method_options=parse_method_options(method_opt or []),
        )
        run_eval(cfg, console)


@app.command("report")
def report_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `specbench eval`.")],
) -> None:
    """Print the summary table and write summary.{json,md,csv,tex}, plots/ and report.html into the run folder."""
    with user_errors():
        from .inputs import check_run_folder
        from .report import make_report

        check_run_folder(run)
        make_report(run, console=stdout_console())


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `specbench eval`.")],
    out: Annotated[Path, typer.Option(help="New folder for the exported answer files.")],
    format: Annotated[
        str, typer.Option(help="spec-bench: one JSONL per method in Spec-Bench's answer format.")
    ] = "spec-bench",
) -> None:
    """Write a run's answers in another tool's format (Spec-Bench's speed.py and equal.py read them)."""
    with user_errors():
        from .inputs import check_out_folder, check_run_folder
        from .report.export import export_spec_bench

        check_run_folder(run)
        check_out_folder(out)
        files = export_spec_bench(run, out, format)
        stdout_console().print(f"wrote {len(files)} answer file(s) under {out}", highlight=False)


@app.command("compare")
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    allow_different_questions: Annotated[
        bool, typer.Option(help="Compare runs even when their question sets differ.")
    ] = False,
) -> None:
    """Runs side by side: differing settings first, then speedup, MAT and tok/s per suite with spreads."""
    with user_errors():
        from .inputs import check_run_folder
        from .report.compare import compare_runs

        for run in runs:
            check_run_folder(run)
        compare_runs(runs, stdout_console(), allow_different_questions)


@app.command("score")
def score_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `specbench eval`.")],
    rescore: Annotated[bool, typer.Option(help="Score every answer again, not only unscored ones.")] = False,
) -> None:
    """Run HumanEval answers that have no stored score in the sandbox and store pass/fail (eval does
    this as it answers; use it for older runs or after a sandbox error). `report` then reads them."""
    with user_errors():
        from collections import Counter

        from .inputs import check_run_folder
        from .scoring.scores import score_run

        check_run_folder(run)
        made, missing = score_run(run, rescore)
        for label in missing:
            console.print(f"warning: suite '{label}' could not be loaded again; its answers stay unscored")
        counts = Counter(s["status"] for s in made)
        console.print(
            f"scored {len(made)} answer(s) in {run}: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        )
        errors = [s for s in made if s["status"] == "error"]
        if errors:  # stored as unscored: the report shows NaN and the next `score` tries again
            raise SpecbenchError(f"the sandbox could not run {len(errors)} answer(s): {errors[0]['detail']}")


@app.command("build-index")
def build_index_command(
    method: Annotated[
        str, typer.Option(help="Datastore kind: rest (suffix array), dresd (dense), sam (automaton).")
    ],
    model: Annotated[
        str, typer.Option(help="Target model whose tokenizer (and hidden states) the store uses.")
    ],
    corpus: Annotated[
        str,
        typer.Option(
            help="FILE.jsonl|FILE.json|FILE.txt|FOLDER|stdlib|generate:SUITE_OR_FILE[,SUITE_OR_FILE...]"
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder (a new folder, or an old datastore with --force).")
    ],
    opt: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE option of the kind, repeatable, e.g. dresd: --opt dim=32 --opt index=Flat."
        ),
    ] = None,
    text_key: Annotated[
        list[str] | None, typer.Option(help="JSON key(s) holding text; repeat to join.")
    ] = None,
    glob: Annotated[
        str | None, typer.Option(help="File pattern inside a corpus folder, e.g. '**/*.py'.")
    ] = None,
    max_docs: Annotated[int | None, typer.Option(help="Use at most this many documents.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing datastore at --out.")] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Prompts answered at once (generate:; default 256 on a GPU, 64 on a CPU); packed rows "
            "of 1024 tokens per forward (dresd; default 64)."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length for generate: corpora.")] = 256,
    temperature: Annotated[
        float, typer.Option(help="generate: corpora: 0 = greedy; above 0 samples, seeded by --seed.")
    ] = 0.0,
    seed: Annotated[
        int, typer.Option(help="Sampling seed of generate: corpora (part of its cache key).")
    ] = 0,
    prompt_format: Annotated[
        str,
        typer.Option(
            help='generate: corpora: chat (the chat template) or plain ("Question: ...\\nAnswer:\\n"); '
            "match the --prompt-format of the eval that uses the store."
        ),
    ] = "chat",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16, bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
) -> None:
    """Build a retrieval datastore from a corpus, with a manifest that eval checks.

    Each kind's own options (`--opt KEY=VALUE`) are listed in docs/datastores.md; an option the kind
    does not have is an error.
    """
    with user_errors():
        from .datastores.build import build_index, check_out_dir, datastore_class, kind_options, parse_opts
        from .evaluate import resolve_device
        from .inputs import check_build_index_inputs
        from .prompts import check_prompt_format

        check_build_index_inputs(
            model, corpus, out, text_key=list(text_key or []), max_docs=max_docs, batch_size=batch_size,
            max_new_tokens=max_new_tokens, device=device, dtype=dtype, temperature=temperature, seed=seed,
        )  # fmt: skip
        check_prompt_format(prompt_format)
        raw = parse_opts(opt or [])
        kind_options(datastore_class(method), raw)  # the kind's own options, before anything loads
        check_out_dir(out, force)
        dev, dt = resolve_device(device, dtype)
        options = {
            "text_key": list(text_key or []),
            "glob": glob,
            "max_docs": max_docs,
            "force": force,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
            "prompt_format": prompt_format,
            "opt": raw,
            "dtype": dt,
            "device": dev,
        }
        build_index(method, model, corpus, out, options, console)


@app.command("train-head")
def train_head_command(
    model: Annotated[str, typer.Option(help="Target model the head drafts for (it stays frozen).")],
    prompts: Annotated[
        list[str],
        typer.Option(
            help="Prompt file (.jsonl/.json: gsm8k/train.jsonl, CodeAlpaca) or suite spec; repeatable."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Head folder: weights, manifest, curve; rerun to resume.")],
    max_prompts: Annotated[
        int | None, typer.Option(help="Use at most this many prompts of each source.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the answers.")] = 2,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Prompts answered at once (generation; default 256 on a GPU, 64 on a CPU)."),
    ] = None,
    train_batch: Annotated[int, typer.Option(help="Sequences per training step.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length.")] = 256,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 3e-4,
    dtype: Annotated[str, typer.Option(help="auto, float32, float16, bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
) -> None:
    """Train an EAGLE draft head on the target's own answers (for eagle2, and rasd/respec hosts)."""
    with user_errors():
        from .head.command import run_train_head
        from .head.train import TrainSettings

        settings = TrainSettings(epochs=epochs, lr=lr, batch_sequences=train_batch)
        run_train_head(
            model,
            split_csv(prompts),
            out,
            settings,
            max_prompts,
            batch_size,
            max_new_tokens,
            device,
            dtype,
            console,
        )


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
