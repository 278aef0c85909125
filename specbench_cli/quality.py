"""Task quality of lossy methods: HumanEval pass@1 (sandboxed), ROUGE-L, and agreement with `ar`.

    table = lossy_quality(records, questions_from_config(run_dir))

A lossy method (ReSpec with relaxed verification) may write text that differs from the target's own
greedy output. The report keeps it out of the lossless rankings and shows, per suite:
- token agreement with `ar`: the matching prefix of the output ids over all turns, as a fraction of
  the longer of the two, and the exact-match rate;
- a task figure: HumanEval pass@1 of the method next to `ar`'s on the same questions, or, for the
  other suites, the mean ROUGE-L F1 of the method's answers against `ar`'s answers.

HumanEval completions run in a child process: `python -I` in a fresh temporary folder, with CPU time,
memory, file size and open-file limits set before it starts, a wall-clock timeout that kills its
whole process group, and a prelude that disables the obvious destructive calls. It is a guard against
accidents in generated code, not a security boundary: the child can still use the network, when the
machine has one, and read files.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import Question

BASELINE = "ar"
TIME_LIMIT_S = 10.0  # per HumanEval task; the reference tests take well under a second
MEMORY_LIMIT = 2 << 30  # bytes of address space
FILE_LIMIT = 16 << 20  # bytes a child may write to one file

# Runs before the candidate code: takes away what could damage the machine if a completion misbehaves.
_GUARD = """\
import builtins, os, shutil, subprocess
for _name in ("system", "kill", "killpg", "fork", "forkpty", "remove", "unlink", "rmdir", "removedirs",
              "rename", "renames", "replace", "truncate", "putenv", "chmod", "chown", "setuid"):
    if hasattr(os, _name):
        setattr(os, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
builtins.exit = builtins.quit = None
"""


@dataclass
class ExecResult:
    status: str  # "passed" | "failed" | "timeout"
    detail: str = ""  # the last lines of stderr when it failed

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limit_child(seconds: float) -> None:
    # Runs in the child between fork and exec.
    cpu = int(math.ceil(seconds)) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(source: str, timeout: float = TIME_LIMIT_S) -> ExecResult:
    """Run a Python program in the sandboxed child; exit status 0 within the time limit passes."""
    with tempfile.TemporaryDirectory(prefix="specbench-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(_GUARD + "\n" + source)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", str(path)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: _limit_child(timeout),
            start_new_session=True,  # its own process group, so a timeout kills what it spawned too
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return ExecResult("timeout", f"no result within {timeout:g} s")
        if proc.returncode == 0:
            return ExecResult("passed")
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return ExecResult("timeout", "CPU time limit")
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        return ExecResult("failed", "\n".join(tail))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


# ----------------------------------------------------------------------------------------------------
# HumanEval

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(answer: str, entry_point: str) -> str:
    """The code of a chat answer: the fenced block that defines `entry_point` (else the first fenced
    block, else the whole answer). A block cut off by the length limit runs to the end of the text."""
    blocks = [m.group(2) for m in _FENCE.finditer(answer)]
    for block in blocks:
        if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", block):
            return block
    return blocks[0] if blocks else answer


def humaneval_program(answer: str, question: Question) -> str:
    """The program to run: the task's prompt (its imports and helpers), the model's code, the tests.

    When the model's code redefines the function, the later definition wins. When it is only a body
    (a completion), it continues the prompt's signature.
    """
    extra = question.extra
    prompt, entry = extra["prompt"], extra["entry_point"]
    code = extract_code(answer, entry)
    if re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
        body = prompt + "\n    pass\n\n" + code
    else:
        body = prompt + code
    return f"{body}\n\n{extra['test']}\n\ncheck({entry})\n"


def humaneval_pass_at_1(
    records: Iterable[dict], questions: Iterable[Question], timeout: float = TIME_LIMIT_S
) -> dict[str, Any]:
    """pass@1 of one answer per task (greedy decoding: one sample is the estimate).

    `records` are answer lines (question_id, choices[0].turns[0]); `questions` the HumanEval suite.
    Records without a matching question are skipped. Returns {"pass_at_1", "passed", "total",
    "results": {question_id: status}}.
    """
    by_id = {q.question_id: q for q in questions}
    jobs = []
    for record in records:
        q = by_id.get(record.get("question_id"))
        if q is None or "test" not in q.extra:
            continue
        answer = record["choices"][0]["turns"][0]
        jobs.append((q.question_id, humaneval_program(answer, q)))
    # One at a time: `preexec_fn` is only safe to fork from a single thread.
    results = [run_program(program, timeout) for _, program in jobs]
    statuses = {qid: r.status for (qid, _), r in zip(jobs, results)}
    passed = sum(r.passed for r in results)
    return {
        "pass_at_1": passed / len(jobs) if jobs else math.nan,
        "passed": passed,
        "total": len(jobs),
        "results": statuses,
    }


# ----------------------------------------------------------------------------------------------------
# Text and token agreement


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) on whitespace tokens: LCS / length gives precision and recall."""
    c, r = candidate.split(), reference.split()
    if not c or not r:
        return 1.0 if c == r else 0.0
    lcs = _lcs_length(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    # One row of the dynamic programme at a time: O(len(a) * len(b)) time, O(len(b)) memory.
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def token_agreement(ids: list[int], reference: list[int]) -> float:
    """Matching prefix length over the longer sequence: 1.0 exactly when the two are equal."""
    longest = max(len(ids), len(reference))
    if longest == 0:
        return 1.0
    n = 0
    for x, y in zip(ids, reference):
        if x != y:
            break
        n += 1
    return n / longest


# ----------------------------------------------------------------------------------------------------
# The report's table


def lossy_quality(
    records: Iterable[dict], questions: dict[str, list[Question]] | None = None, timeout: float = TIME_LIMIT_S
) -> list[dict[str, Any]]:
    """One row per (suite, lossy method): agreement with `ar` and the task quality figure.

    `records` are answer lines carrying `suite` and `method` (as the report reads them); a record with
    `lossless_method: false` marks its method lossy. `questions` maps a suite label to its questions
    (needed for HumanEval's tests only: see `questions_from_config`). A suite label starting with
    "humaneval" gets pass@1; the others get ROUGE-L against `ar`. Figures that cannot be computed
    (no `ar` answers, no tests) are NaN.
    """
    questions = questions or {}
    by_key: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        by_key.setdefault((str(record.get("suite")), str(record.get("method"))), []).append(record)
    rows = []
    for (suite, method), recs in sorted(by_key.items()):
        if method == BASELINE or all(r.get("lossless_method", True) for r in recs):
            continue
        base = {r["question_id"]: r for r in by_key.get((suite, BASELINE), [])}
        paired = [(r, base[r["question_id"]]) for r in recs if r["question_id"] in base]
        agree, exact, rouge = [], [], []
        for r, b in paired:
            ids, base_ids = _all_ids(r), _all_ids(b)
            if ids is not None and base_ids is not None:
                agree.append(token_agreement(ids, base_ids))
                exact.append(float(ids == base_ids))
            turns, base_turns = r["choices"][0]["turns"], b["choices"][0]["turns"]
            rouge.append(_mean([rouge_l(t, bt) for t, bt in zip(turns, base_turns)]))
        row: dict[str, Any] = {
            "suite": suite,
            "method": method,
            "questions": len(recs),
            "paired": len(paired),
            "token_agreement": _mean(agree),
            "exact_match": _mean(exact),
            "quality_metric": "rouge_l_vs_ar",
            "quality": _mean(rouge),
            "quality_ar": 1.0 if paired else math.nan,
        }
        if suite.startswith("humaneval"):
            qs = questions.get(suite)
            row["quality_metric"] = "humaneval_pass@1"
            row["quality"] = row["quality_ar"] = math.nan
            if qs:
                ids = {r["question_id"] for r, _ in paired}
                row["quality"] = humaneval_pass_at_1(
                    [r for r in recs if r["question_id"] in ids], qs, timeout
                )["pass_at_1"]
                row["quality_ar"] = humaneval_pass_at_1([b for _, b in paired], qs, timeout)["pass_at_1"]
        rows.append(row)
    return rows


def questions_from_config(run_dir: Path) -> dict[str, list[Question]]:
    """The HumanEval questions of a run folder, reloaded from the suite specs in its config.json.

    Only suites whose label starts with "humaneval" are loaded (the others need no questions). A
    suite that cannot be loaded again (file moved, package missing) is left out: its pass@1 is NaN.
    """
    from .suites import load_suite
    from .types import SpecbenchError

    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    # The run may have renamed clashing labels (suites.load_suites): suites_info, in --suite order,
    # holds the label each spec's answers were filed under.
    labels = [info.get("name") for info in config.get("suites_info") or []]
    out: dict[str, list[Question]] = {}
    for i, spec in enumerate(config.get("suites", [])):
        if not str(spec).startswith("humaneval"):
            continue
        try:
            suite = load_suite(str(spec), None, int(config.get("seed", 0)))
        except (SpecbenchError, OSError):
            continue
        out[labels[i] if i < len(labels) and labels[i] else suite.name] = suite.questions
    return out


def _all_ids(record: dict) -> list[int] | None:
    turns = record["choices"][0].get("output_ids")
    if turns is None:
        return None
    return [int(t) for turn in turns for t in turn]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
