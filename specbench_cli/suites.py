"""Benchmark suites: the table of suites, and which of their questions a run takes.

    suite = load_suite("spec-bench:path/to/question.jsonl#summarization", limit=10)

Reading a question file is suite_parsers.py, finding or fetching it suite_files.py, and the prompt of
a turn prompts.py.

A suite spec reads `NAME[:PATH][#CATEGORY]`. Every suite becomes a list of `Question`s in Spec-Bench's
question.jsonl shape. No third-party question file lives in this repository: each is read from a path,
from the data folders below, or fetched once from its pinned public source into the cache, with its
sha256 checked, so that two runs that report the same sha256 asked the same questions.

Places looked in, in order, when no PATH is given:
  $SPECBENCH_DATA/<layout>          a data root laid out like ../shared/data (spec_bench/question.jsonl, ...)
  ../shared/data/<layout>           relative to the working directory
  $SPECBENCH_CACHE/data/...         default ~/.cache/specbench; filled by the first download

`--limit N` takes N questions after the category filter. When the questions span several tasks they are
taken round-robin: first across Spec-Bench's subtasks (the 8 MT-Bench categories count as one task,
`mt_bench`, as in Spec-Bench's speed.py), then across the categories inside a task. So 40 Spec-Bench
questions are about 7 from each of the 6 subtasks instead of 40 MT-Bench ones. The chosen questions
keep the suite's own order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import suite_files
from .registry import SUITES
from .suite_parsers import read_code_alpaca, read_humaneval, read_question_file
from .types import Question, SpecbenchError

MT_BENCH_CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
CODE_ALPACA_SUBSET = 100  # DReSD-style evaluation subset when no --limit is given


@dataclass(frozen=True)
class SuiteSource:
    """How a suite's questions are found (when no PATH is given) and read."""

    find: Callable[[], Path] | None  # the default file; None: the user must give PATH
    read: Callable[[Path, int], tuple[list[Question], str]]  # (file, seed) -> (questions, sha256)
    default_limit: int | None = None  # questions taken when no --limit is given


# One source per suite, registered by name in `registry.SUITES`. `find` looks the pinned file up at
# call time, so a replaced entry (tests, a mirror) is seen.
SPEC_BENCH = SuiteSource(suite_files.find_spec_bench, lambda f, seed: read_question_file(f))
MT_BENCH = SuiteSource(
    lambda: suite_files.packaged_file(suite_files.MT_BENCH_FILE, "mt-bench"),
    lambda f, seed: read_question_file(f),
)
CODE_ALPACA = SuiteSource(suite_files.find_code_alpaca, read_code_alpaca, default_limit=CODE_ALPACA_SUBSET)
HUMANEVAL = SuiteSource(
    lambda: suite_files.packaged_file(suite_files.HUMANEVAL_FILE, "humaneval"),
    lambda f, seed: read_humaneval(f),
)
JSONL = SuiteSource(None, lambda f, seed: read_question_file(f))


@dataclass
class LoadedSuite:
    name: str  # label for the answers folder, e.g. "spec-bench#summarization"
    questions: list[Question]
    source: str  # the file read (a path given, a data folder, an installed package or the cache)
    sha256: str  # of the source file
    categories: list[str]  # categories of `questions`, in order of first appearance


# ----------------------------------------------------------------------------------------------------
# Entry point


def load_suite(spec: str, limit: int | None = None, seed: int = 0) -> LoadedSuite:
    """Parse `NAME[:PATH][#CATEGORY]`, load the questions, filter by category, then apply the limit."""
    if limit is not None and limit < 1:
        raise SpecbenchError(f"--limit must be at least 1, got {limit}")
    name, path, category = _parse_spec(spec)

    source = SUITES.get(name)
    if path:
        file = Path(path)
    elif source.find is not None:
        file = source.find()
    else:  # jsonl: _parse_spec already required a PATH
        raise SpecbenchError(f"suite '{name}' needs a file: {name}:PATH")
    questions, sha = source.read(file, seed)
    if limit is None:
        limit = source.default_limit

    if category is not None:
        questions = _filter_category(questions, category, name)
    questions = _take_round_robin(questions, limit)

    label = name if name != "jsonl" else f"jsonl-{file.name.split('.')[0]}"
    if category is not None:
        label += f"#{category}"
    return LoadedSuite(
        name=_safe_label(label),
        questions=questions,
        source=str(file),
        sha256=sha,
        categories=_unique(q.category for q in questions),
    )


def load_suites(specs: list[str], limit: int | None = None, seed: int = 0) -> list[LoadedSuite]:
    """`load_suite` for every spec of one run, with labels made unique (each suite has its own answers).

    Labels come from the suite name or, for `jsonl:`, the file name, so `jsonl:a/question.jsonl` and
    `jsonl:b/question.jsonl` would share one answer folder. Suites that hold the same questions (same
    label and same file sha256) are the same suite listed twice: refused. Otherwise each label of a
    clashing group gets its file's folder name (`jsonl-question-a`, `jsonl-question-b`, before any
    `#category`), and where that still clashes a number (`-2`, `-3`, ... in --suite order). The result
    depends only on the specs and their order, so a `--resume` with the same --suite list finds the
    same answer folders.
    """
    suites = [load_suite(spec, limit, seed) for spec in specs]
    groups: dict[str, list[int]] = {}
    for i, suite in enumerate(suites):
        groups.setdefault(suite.name, []).append(i)
    taken = set(groups)
    for label, members in groups.items():
        if len(members) < 2:
            continue
        _refuse_repeats(label, [suites[i] for i in members], [specs[i] for i in members])
        by_folder = [_qualified(label, _safe_label(Path(suites[i].source).parent.name)) for i in members]
        if len(set(by_folder)) == len(by_folder) and not taken & set(by_folder):
            new_labels = by_folder
        else:  # same folder names (x/a/q.jsonl, y/a/q.jsonl): number them instead
            new_labels = [label]
            for _ in members[1:]:
                new_labels.append(_numbered(label, taken | set(new_labels)))
        for i, new in zip(members, new_labels, strict=True):
            suites[i].name = new
        taken |= set(new_labels)
    return suites


def _refuse_repeats(label: str, clashing: list[LoadedSuite], specs: list[str]) -> None:
    seen: dict[str, str] = {}
    for suite, spec in zip(clashing, specs, strict=True):
        if suite.sha256 in seen:
            raise SpecbenchError(
                f"suites '{seen[suite.sha256]}' and '{spec}' are the same suite ('{label}', same questions, "
                f"sha256 {suite.sha256[:12]}); list it once"
            )
        seen[suite.sha256] = spec


def _qualified(label: str, qualifier: str) -> str:
    # The qualifier goes before any "#category", which stays the label's last part.
    base, hash_sign, category = label.partition("#")
    return f"{base}-{qualifier}{hash_sign}{category}"


def _numbered(label: str, taken: set[str]) -> str:
    n = 2
    while _qualified(label, str(n)) in taken:
        n += 1
    return _qualified(label, str(n))


def _parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    # The category is split off the end so that a ':' inside PATH stays part of the path.
    rest, hash_sign, category = spec.rpartition("#") if "#" in spec else (spec, "", "")
    name, _, path = rest.partition(":")
    SUITES.check(name)
    if hash_sign and not category:
        raise SpecbenchError(f"empty category in suite '{spec}'; write {name}#CATEGORY")
    if name == "jsonl" and not path:
        raise SpecbenchError("suite 'jsonl' needs a file: jsonl:PATH")
    return name, path or None, category or None


def _safe_label(label: str) -> str:
    # Folder names: keep letters, digits and . _ - #, squash anything else (slashes, spaces) to '_'.
    return re.sub(r"[^A-Za-z0-9._#-]+", "_", label).lstrip(".") or "suite"


# ----------------------------------------------------------------------------------------------------
# Category filter and limit


def spec_bench_task(category: str) -> str:
    """Spec-Bench's subtask of a category: the MT-Bench categories form one task, `mt_bench`."""
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


def _filter_category(questions: list[Question], category: str, suite: str) -> list[Question]:
    categories = _unique(q.category for q in questions)
    if category in categories:
        return [q for q in questions if q.category == category]
    # A task name such as `mt_bench` selects all of its categories.
    tasks = [t for t in _unique(spec_bench_task(c) for c in categories) if t not in categories]
    if category in tasks:
        return [q for q in questions if spec_bench_task(q.category) == category]
    raise SpecbenchError(
        f"unknown category '{category}' for suite '{suite}'; choose from: {', '.join(categories + tasks)}"
    )


def _round_robin(groups: list[list[int]]) -> list[int]:
    out: list[int] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _take_round_robin(questions: list[Question], limit: int | None) -> list[Question]:
    if limit is None or limit >= len(questions):
        return list(questions)
    by_task: dict[str, dict[str, list[int]]] = {}
    for i, q in enumerate(questions):
        by_task.setdefault(spec_bench_task(q.category), {}).setdefault(q.category, []).append(i)
    per_task = [_round_robin(list(by_category.values())) for by_category in by_task.values()]
    chosen = sorted(_round_robin(per_task)[:limit])  # back to the suite's order
    return [questions[i] for i in chosen]


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))
