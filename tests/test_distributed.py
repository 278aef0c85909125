"""Multi-process eval (torchrun, gloo on the CPU): the same answers as one process, and resume across
a different number of processes without duplicates (tiny-random)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import eval_args, run

from specbench_cli.distributed import (
    RANK_FOLDER,
    Ranks,
    launched_ranks,
    merge_rank_files,
    my_share,
    rank_paths,
)
from specbench_cli.results import RunPaths, append_answer, read_answers
from specbench_cli.types import SpecbenchError

ROOT = Path(__file__).resolve().parents[1]


def answer_files(out: Path) -> dict[tuple[str, str], list[dict]]:
    return {(suite, method): read_answers(path) for suite, method, path in RunPaths(out).iter_answer_files()}


def token_ids(out: Path) -> dict[tuple[str, str], list]:
    """(suite, method) -> [(question_id, output ids of every turn)] in file order."""
    return {
        key: [(r["question_id"], r["choices"][0]["output_ids"]) for r in records]
        for key, records in answer_files(out).items()
    }


def line_count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "one"
    result = run(*eval_args(out))
    assert result.exit_code == 0, result.output
    return out


def test_two_gloo_processes_equal_one_process(one_process, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*launch, "-m", "specbench_cli", *eval_args(out, "--device", "cpu")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rank 0 of 2: 3 questions" in done.stdout + done.stderr  # each rank answers its half of six
    # Same questions, same token ids, same line order as the one-process run; every line once.
    assert token_ids(out) == token_ids(one_process)
    for _, _, path in RunPaths(out).iter_answer_files():
        assert line_count(path) == len(read_answers(path))
    assert not list(RunPaths(out).answers_dir.glob(f"{RANK_FOLDER}*")), "rank folders are merged away"
    config = json.loads(RunPaths(out).config.read_text())
    assert config["world_size"] == 2
    assert (out / "summary.json").is_file()


def test_resume_with_another_process_count_has_no_duplicates(one_process, tmp_path):
    """A killed three-rank run: some answers merged, some in rank folders, some missing. One process
    resumes it, answers only the missing ones and merges everything in question order."""
    out = tmp_path / "partial"
    shutil.copytree(one_process, out, ignore=shutil.ignore_patterns("summary*", "plots", ".lock"))
    paths = RunPaths(out)
    for (suite, method), records in answer_files(one_process).items():
        main_file = paths.answers_file(suite, method)
        main_file.write_text(json.dumps(records[0]) + "\n")  # merged by an earlier resume
        for i, record in enumerate(records[1:-2], start=1):  # the last two were never answered
            rank_file = rank_paths(paths, _ranks(i % 3, 3)).answers_file(suite, method)
            append_answer(rank_file, record)
    result = run(*eval_args(out, "--resume"))
    assert result.exit_code == 0, result.output
    assert "answers already done" in result.output
    assert token_ids(out) == token_ids(one_process)
    for key, records in answer_files(out).items():
        kept = {r["question_id"]: r["answer_id"] for r in answer_files(one_process)[key][:-2]}
        # Done answers are kept as they were (not answered again); only the missing two are new.
        assert {r["question_id"]: r["answer_id"] for r in records[:-2]} == kept
        assert line_count(paths.answers_file(*key)) == len(records)
    assert not list(paths.answers_dir.glob(f"{RANK_FOLDER}*"))


def _ranks(rank: int, world: int) -> Ranks:
    return Ranks(rank=rank, world=world, local_rank=rank)


def test_questions_are_dealt_round_robin():
    items = list(range(7))
    shares = [my_share(items, _ranks(r, 3)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert my_share(items, None) == items


def test_merge_orders_by_question_and_keeps_each_id_once(tmp_path):
    paths = RunPaths(tmp_path)
    for rank, qids in ((1, ["b", "d"]), (0, ["c", "a"])):
        for q in qids:
            append_answer(rank_paths(paths, _ranks(rank, 2)).answers_file("s", "ar"), {"question_id": q})
    append_answer(rank_paths(paths, _ranks(0, 2)).answers_file("s", "ar"), {"question_id": "a", "repeat": 1})
    append_answer(paths.answers_file("s", "ar"), {"question_id": "a"})  # also merged before
    assert merge_rank_files(paths, {"s": ["a", "b", "c", "d"]}) == 1
    kept = [(r["question_id"], r.get("repeat", 0)) for r in read_answers(paths.answers_file("s", "ar"))]
    assert kept == [("a", 0), ("b", 0), ("c", 0), ("d", 0), ("a", 1)]  # a one-process run's order
    assert line_count(paths.answers_file("s", "ar")) == 5


def test_launch_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_ranks() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_ranks() == _ranks(1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SpecbenchError, match="outside WORLD_SIZE"):
        launched_ranks()
