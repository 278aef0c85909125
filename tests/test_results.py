"""Run-folder files: crash-safe answer lines, repair, de-duplication and atomic writes."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specbench_cli.results import (
    RunPaths,
    answer_key,
    append_answer,
    read_answers,
    write_json_atomic,
    write_text_atomic,
)
from specbench_cli.types import SpecbenchError


def record(qid, text="x", **extra) -> dict:
    return {"question_id": qid, "category": "writing", "choices": [{"index": 0, "turns": [text]}], **extra}


def line_bytes(rec: dict) -> bytes:
    return (json.dumps(rec) + "\n").encode()


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_append_then_read_round_trips(tmp_path):
    path = tmp_path / "answers" / "suite" / "ar.jsonl"  # parent folders are created on demand
    recs = [record(i, text=f"answer {i} ✓") for i in range(5)]
    for rec in recs:
        append_answer(path, rec)
    data = path.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == len(recs)
    assert read_answers(path) == recs
    assert {answer_key(r) for r in read_answers(path)} == {(rec["question_id"], 0) for rec in recs}


def test_duplicates_keep_the_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    for rec in [record(1, "old"), record(2), record(1, "new"), record("q3")]:
        append_answer(path, rec)
    got = read_answers(path)
    assert [r["question_id"] for r in got] == [2, 1, "q3"]
    assert {r["question_id"]: r["choices"][0]["turns"][0] for r in got}[1] == "new"
    assert {answer_key(r) for r in got} == {(1, 0), (2, 0), ("q3", 0)}
    # A repeat of the same question is another answer, not a replacement.
    append_answer(path, {**record(2), "repeat": 1})
    assert {answer_key(r) for r in read_answers(path)} == {(1, 0), (2, 0), ("q3", 0), (2, 1)}


def test_partial_trailing_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    good = [record(1), record(2)]
    for rec in good:
        append_answer(path, rec)
    clean = path.read_bytes()
    cut = line_bytes(record(3, "a long answer " * 20))
    with open(path, "ab") as f:  # what a run killed in the middle of a write could leave
        f.write(cut[: len(cut) // 2])
    damaged = path.read_bytes()

    assert read_answers(path) == good
    assert path.read_bytes() == damaged  # reading alone never modifies the file
    assert read_answers(path, repair=True) == good
    assert path.read_bytes() == clean
    assert temp_files(tmp_path) == []


def test_append_after_a_partial_line_keeps_the_file_clean(tmp_path):
    path = tmp_path / "a.jsonl"
    append_answer(path, record(1))
    with open(path, "ab") as f:
        f.write(b'{"question_id": 2, "choi')
    append_answer(path, record(3))
    assert [r["question_id"] for r in read_answers(path)] == [1, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(line_bytes(record(1)) + line_bytes(record(2)).rstrip(b"\n"))
    assert [r["question_id"] for r in read_answers(path)] == [1, 2]
    read_answers(path, repair=True)
    assert path.read_bytes() == line_bytes(record(1)) + line_bytes(record(2))


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "pld.jsonl"
    path.write_bytes(line_bytes(record(1)) + b"{not json}\n" + line_bytes(record(3)))
    with pytest.raises(SpecbenchError, match=r"pld\.jsonl: line 2"):
        read_answers(path)
    # A JSON line that is not an answer record is just as wrong.
    path.write_bytes(line_bytes(record(1)) + b"[1, 2]\n" + line_bytes(record(3)))
    with pytest.raises(SpecbenchError, match="line 2"):
        read_answers(path, repair=True)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(line_bytes(record(1)) + b"\n  \n" + line_bytes(record(2)))
    assert [r["question_id"] for r in read_answers(path)] == [1, 2]


def test_killed_writer_leaves_a_readable_file(tmp_path):
    path = tmp_path / "a.jsonl"
    script = (
        "import sys; from pathlib import Path; from specbench_cli.results import append_answer\n"
        "i = 0\n"
        "while True:\n"
        "    append_answer(Path(sys.argv[1]), {'question_id': i, 'choices': [{'turns': ['y' * 200000]}]})\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=Path(__file__).parents[1])
    deadline = time.time() + 20
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 2_000_000):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recs = read_answers(path, repair=True)
    assert len(recs) >= 5
    assert [r["question_id"] for r in recs] == list(range(len(recs)))
    assert path.read_bytes().count(b"\n") == len(recs)


def test_write_json_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run" / "config.json"
    write_json_atomic(path, {"a": 1, "path": Path("x/y"), "ids": {3, 1}})
    assert json.loads(path.read_text()) == {"a": 1, "path": "x/y", "ids": [1, 3]}
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}

    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    with pytest.raises(ValueError):  # strict JSON: NaN must become null before writing
        write_json_atomic(path, {"bad": math.nan})
    assert json.loads(path.read_text()) == {"a": 2}  # the old file survives a failed write
    write_text_atomic(tmp_path / "run" / "note.md", "hello\n")
    assert (tmp_path / "run" / "note.md").read_text() == "hello\n"
    assert temp_files(tmp_path) == []


def test_run_paths_layout(tmp_path):
    paths = RunPaths(tmp_path / "run1")
    assert paths.config == tmp_path / "run1" / "config.json"
    assert paths.env.name == "env.json"
    assert {p.name for p in (paths.summary_json, paths.summary_md, paths.summary_csv, paths.summary_tex)} == {
        "summary.json",
        "summary.md",
        "summary.csv",
        "summary.tex",
    }
    assert paths.plots_dir == tmp_path / "run1" / "plots"
    assert paths.answers_file("mt-bench", "pld") == tmp_path / "run1" / "answers" / "mt-bench" / "pld.jsonl"
    assert list(paths.iter_answer_files()) == []  # no answers folder yet

    for suite, method in [("mt-bench", "pld"), ("mt-bench", "ar"), ("humaneval", "ar")]:
        append_answer(paths.answers_file(suite, method), record(1))
    (paths.answers_dir / "mt-bench" / ".ar.jsonl.x.tmp").write_text("")
    (paths.answers_dir / "mt-bench" / "notes.txt").write_text("")
    assert [(s, m) for s, m, _ in paths.iter_answer_files()] == [
        ("humaneval", "ar"),
        ("mt-bench", "ar"),
        ("mt-bench", "pld"),
    ]
    assert all(p.exists() for _, _, p in paths.iter_answer_files())


@pytest.mark.parametrize("label", ["", "..", "a/b", ".hidden", "a\\b"])
def test_run_paths_refuse_unsafe_labels(tmp_path, label):
    with pytest.raises(SpecbenchError, match="invalid"):
        RunPaths(tmp_path).answers_file(label, "ar")
    with pytest.raises(SpecbenchError, match="invalid"):
        RunPaths(tmp_path).answers_file("suite", label)


def test_run_folder_lock_refuses_a_second_holder_and_cleans_up_a_failed_start(tmp_path):
    from specbench_cli.results import run_folder_lock

    root = tmp_path / "run"
    with run_folder_lock(root, resume=False):
        assert [p.name for p in root.iterdir()] == [".lock"]
        with pytest.raises(SpecbenchError, match="in use by another specbench eval"):
            with run_folder_lock(root, resume=True):
                pass
        with pytest.raises(SpecbenchError, match="already exists"):
            with run_folder_lock(root, resume=False):
                pass
    with run_folder_lock(root, resume=True):  # released at the end of the block
        pass
    # A run that fails before writing anything leaves no folder behind; one that wrote keeps it.
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), run_folder_lock(fresh, resume=False):
        raise RuntimeError("model load failed")
    assert not fresh.exists()
    with pytest.raises(RuntimeError), run_folder_lock(fresh, resume=False):
        (fresh / "config.json").write_text("{}")
        raise RuntimeError("died after the first write")
    assert (fresh / "config.json").exists()
