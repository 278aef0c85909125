"""Checks on the values a user types, run before anything is written and before a model loads.

Each check raises a `SpecbenchError` whose one line names the option and the bad value. The bounds
are what the code below can actually take: a seed torch, numpy and `random` all accept, a thread count
OpenMP does not crash on, a token budget the preallocated KV cache can hold. The one check that needs
the model, `check_prompts_fit`, runs after the model's config is read and before the run folder gets
its first file. No torch here: `specbench eval` with a typo answers before torch is imported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .prompts import check_prompt_format
from .types import SpecbenchError

SEED_MAX = 2**32 - 1  # numpy's legacy seed is the narrowest consumer; torch takes up to 2**64 - 1
MIN_TEMPERATURE = 1e-4  # logits / T must stay finite: T = 1e-300 turns softmax into NaN
MAX_NEW_TOKENS = 1 << 20  # the cache is preallocated: 10**12 slots is an out-of-memory, not a run
MAX_WARMUP = 100  # untimed generations per method; more is a typo, not a warm-up
MAX_REPEATS = 100  # runs of each question per method (the benchmark uses 3); more is a typo
MAX_BATCH_SIZE = 1 << 16
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Config fields that hold a model's context length, by architecture family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_range(option: str, value: int | None, low: int, high: int | None = None) -> None:
    """`--option` must lie in [low, high] (None = no upper bound); None itself means "not given"."""
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise SpecbenchError(f"{option} must be {bound}, got {value}")


def max_threads() -> int:
    # A few times the cores allows deliberate oversubscription; 10**6 threads segfaults inside OpenMP.
    return 4 * (os.cpu_count() or 1)


def check_temperature(temperature: float) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise SpecbenchError(f"--temperature must be a finite number >= 0, got {temperature}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise SpecbenchError(
            f"--temperature {temperature} is too small to sample with (logits / T overflows); "
            f"use 0 for greedy or at least {MIN_TEMPERATURE}"
        )


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise SpecbenchError(f"unknown --dtype '{dtype}'; choose from: {', '.join(DTYPES)}")


def check_device(device: str) -> None:
    name, colon, index = device.partition(":")
    if device in ("auto", "cpu", "cuda") or (name == "cuda" and colon and index.isdigit()):
        return
    raise SpecbenchError(f"unknown --device '{device}'; choose from: auto, cpu, cuda, cuda:N")


def check_specs(option: str, specs: list[str]) -> None:
    """A comma-separated list option (after splitting) must name at least one thing."""
    if not specs:
        raise SpecbenchError(f"{option} is empty; name at least one")


def check_out_folder(out: Path, option: str = "--out") -> None:
    """The folder can be created or entered: its nearest existing ancestor is a writable folder."""
    if not str(out).strip():
        raise SpecbenchError(f"{option} is empty; name a folder, e.g. results/run1")
    if out.exists():
        if not out.is_dir():
            raise SpecbenchError(f"{option} {out} exists and is not a folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise SpecbenchError(f"{option} {out}: the folder is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SpecbenchError(f"{option} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpecbenchError(f"{option} {out}: cannot create it, {parent} is not writable")


def check_eval_inputs(cfg: Any) -> None:
    """Every `specbench eval` value that needs neither files nor models (an `EvalConfig`)."""
    check_specs("--suite", cfg.suites)
    check_temperature(cfg.temperature)
    check_range("--seed", cfg.seed, 0, SEED_MAX)
    check_range("--max-new-tokens", cfg.max_new_tokens, 1, MAX_NEW_TOKENS)
    check_range("--limit", cfg.limit, 1)
    check_range("--warmup", cfg.warmup, 0, MAX_WARMUP)
    check_range("--repeats", cfg.repeats, 1, MAX_REPEATS)
    check_range("--max-turns", cfg.max_turns, 1)
    check_prompt_format(cfg.prompt_format)
    check_range("--threads", cfg.threads, 1, max_threads())
    check_device(cfg.device)
    check_dtype(cfg.dtype)
    for name, value in (("--model", cfg.model), ("--draft-model", cfg.draft_model)):
        if value is not None and not value.strip():
            raise SpecbenchError(f"{name} is empty; give an alias (see `specbench ls`), a hub id or a path")
    for store in cfg.datastores:
        if not str(store).strip() or not store.is_dir():
            raise SpecbenchError(
                f"--datastore '{store}' is not a folder; build one with `specbench build-index`"
            )
    check_out_folder(cfg.out)


def check_build_index_inputs(
    model: str,
    corpus: str,
    out: Path,
    *,
    text_key: list[str],
    max_docs: int | None,
    batch_size: int | None,
    max_new_tokens: int,
    device: str,
    dtype: str,
    temperature: float = 0.0,
    seed: int = 0,
) -> None:
    """The `specbench build-index` values that need neither files nor models (the kind's --opt options
    and the folder rules: datastores/build.py)."""
    if not model.strip():
        raise SpecbenchError("--model is empty; give an alias (see `specbench ls`), a hub id or a path")
    if not corpus.strip():
        raise SpecbenchError("--corpus is empty; give a file, a folder, stdlib or generate:SUITE")
    if any(not key.strip() for key in text_key):
        raise SpecbenchError("--text-key is empty; name a JSON key, e.g. --text-key text")
    check_range("--max-docs", max_docs, 1)
    check_range("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    check_range("--max-new-tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    check_temperature(temperature)
    check_range("--seed", seed, 0, SEED_MAX)
    check_device(device)
    check_dtype(dtype)
    check_out_folder(out)


def check_run_folder(run: Path) -> None:
    """`specbench report RUN`: a folder (what is inside is checked by the report itself)."""
    if run.exists() and not run.is_dir():
        raise SpecbenchError(f"'{run}' is a file; pass the run folder written by `specbench eval --out`")


def model_context(config: Any) -> int | None:
    """The longest sequence the model was built for (its position table), or None when unknown."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompts_fit(
    lengths: list[tuple[str, Any, int, int]], max_new_tokens: int, model: str, context: int | None
) -> None:
    """Every question's turns, and the answer budget, fit the model's context.

    `lengths` holds (suite label, question id, prompt tokens of all the question's turns, turns). A
    conversation whose answers push it past the context still runs (past the trained positions, as
    Spec-Bench does with long answers); one whose questions alone do not fit cannot be answered at all.
    """
    if context is None:
        return
    if max_new_tokens > context:
        raise SpecbenchError(
            f"--max-new-tokens {max_new_tokens} is more than {model}'s context of {context} tokens"
        )
    for suite, question_id, length, _ in lengths:
        if length >= context:
            raise SpecbenchError(
                f"suite '{suite}' question {question_id!r}: the prompt is {length} tokens, "
                f"longer than {model}'s context of {context} tokens"
            )
