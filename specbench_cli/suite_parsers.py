"""Readers of the question files: Spec-Bench's question.jsonl (MT-Bench and `jsonl:` share it),
CodeAlpaca's JSON list and HumanEval's JSONL(.gz). Each returns (questions, sha256 of the file) and
turns any malformed input into one SpecbenchError line that names the file and the line or item."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from .types import Question, SpecbenchError

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, signature and docstring "
    "included, in one ```python code block.\n\n```python\n{prompt}```"
)


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


def read_question_file(path: Path) -> tuple[list[Question], str]:
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


def read_code_alpaca(path: Path, seed: int) -> tuple[list[Question], str]:
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


def read_humaneval(path: Path) -> tuple[list[Question], str]:
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
