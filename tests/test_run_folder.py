"""Run-folder reliability: resume provenance, unique suite labels and the run-folder lock (CLI, tiny-random)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import QUESTIONS, assert_one_line_error, eval_args, run

from specbench_cli.evaluate import provenance_mismatch


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a run folder but the lock file, to show that a refused command wrote nothing."""
    return {
        str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"
    }


def question_file(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "question.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_questions() -> list[dict]:
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


def with_suite(args: list[str], *specs: str) -> list[str]:
    i = args.index("--suite")
    return args[:i] + [x for spec in specs for x in ("--suite", spec)] + args[i + 2 :]


# ----------------------------------------------------------------------------------------------------
# Resume provenance


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One two-question run on a private copy of the question file (the test may then edit it)."""
    root = tmp_path_factory.mktemp("prov")
    questions = question_file(root / "data", small_questions())
    out = root / "run"
    args = with_suite(eval_args(out, "--limit", "2"), f"jsonl:{questions}")
    result = run(*args)
    assert result.exit_code == 0, result.output
    return out, questions, args


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--limit", "3"], "limit"),
        (["--temperature", "0.5"], "temperature"),
        (["--seed", "1"], "seed"),
        (["--method-opt", "pld.num_pred=8"], "method_options[pld]"),
    ],
)
def test_resume_refuses_a_changed_setting_and_writes_nothing(finished_run, extra, needle):
    out, _, args = finished_run
    before = snapshot(out)
    args = list(args) + ["--resume"]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args and flag != "--method-opt":
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    result = run(*args)
    assert_one_line_error(result, needle, " was ", ", now ")
    assert snapshot(out) == before


def test_resume_refuses_another_question_file_of_the_same_name(finished_run):
    out, questions, args = finished_run
    before = snapshot(out)
    original = questions.read_text()
    rows = small_questions()
    rows[0]["turns"] = ["A different first question."]
    try:
        question_file(questions.parent, rows)
        result = run(*args, "--resume")
    finally:
        questions.write_text(original)
    assert_one_line_error(result, "suite[jsonl-question].sha256")
    assert snapshot(out) == before


def test_resume_may_add_a_method_and_change_warmup(tmp_path):
    out = tmp_path / "run"
    args = eval_args(out, "--limit", "1")
    args[args.index("--methods") + 1] = "ar"
    assert run(*args).exit_code == 0
    args[args.index("--methods") + 1] = "ar,pld"
    args[args.index("--warmup") + 1] = "1"
    result = run(*args, "--resume", "--method-opt", "pld.num_pred=8")  # a new method brings options
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["methods"] == ["ar", "pld"] and config["method_options"] == {"pld": {"num_pred": 8}}
    assert len(next((out / "answers").glob("*/pld.jsonl")).read_text().splitlines()) == 1
    # Leaving pld out keeps its recorded options, so a later resume with pld is still checked.
    args[args.index("--methods") + 1] = "ar"
    assert run(*args, "--resume").exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method_options"] == {"pld": {"num_pred": 8}} and "pld" in config["methods_params"]
    args[args.index("--methods") + 1] = "ar,pld"
    assert_one_line_error(run(*args, "--resume"), "method_options[pld] was {'num_pred': 8}", "now {}")


def test_resume_refuses_a_rebuilt_datastore(tmp_path, tiny):
    from specbench_cli.datastores import build_from_token_docs
    from specbench_cli.models import tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tiny.tokenizer)
    first = build_from_token_docs(
        "rest", [[5, 6, 7, 8, 9] * 8], tmp_path / "store", "tiny-random", fingerprint
    )
    out = tmp_path / "run"
    args = eval_args(out, "--datastore", str(first), "--limit", "1")
    args[args.index("--methods") + 1] = "ar,rest"
    assert run(*args).exit_code == 0
    before = snapshot(out)
    # Same path, other drafts: a rebuild from another corpus must not be mixed into the same numbers.
    build_from_token_docs(
        "rest", [[9, 8, 7, 6] * 8], tmp_path / "store", "tiny-random", fingerprint, force=True
    )
    assert_one_line_error(run(*args, "--resume"), "datastore[rest]", "manifest_sha256")
    assert snapshot(out) == before


def test_provenance_compares_method_and_datastore_keys_only_when_both_have_them():
    old = {
        "model": "m",
        "engine": "eager",
        "methods": ["ar", "pld"],
        "method_options": {"pld": {"num_pred": 8}},
        "datastores_info": {"rest": {"path": "s", "manifest_sha256": "1"}},
        "suites_info": [{"name": "s1", "source": "a.jsonl", "sha256": "x", "questions": 3}],
    }
    same_but_fewer = old | {"methods": ["ar"], "method_options": {}, "datastores_info": {}}
    assert provenance_mismatch(old, same_but_fewer) is None
    more = old | {
        "methods": ["ar", "pld", "sps"],
        "method_options": {"pld": {"num_pred": 8}, "sps": {"k": 3}},
    }
    assert provenance_mismatch(old, more) is None
    assert provenance_mismatch(old, old | {"method_options": {}}) == (
        "method_options[pld]",
        {"num_pred": 8},
        {},
    )
    # An engine still "auto" before the model loads is compared only once resolved.
    assert provenance_mismatch(old, old | {"engine": "auto"}, final=False) is None
    assert provenance_mismatch(old, old | {"engine": "compiled"}, final=False)[0] == "engine"
    assert provenance_mismatch(old, old | {"engine": "auto"})[0] == "engine"
    renamed = old | {"suites_info": [{"name": "s2", "source": "a.jsonl", "sha256": "x", "questions": 3}]}
    assert provenance_mismatch(old, renamed)[0] == "suites"
    fewer_questions = old | {
        "suites_info": [{"name": "s1", "source": "a.jsonl", "sha256": "x", "questions": 2}]
    }
    assert provenance_mismatch(old, fewer_questions) == ("suite[s1].questions", 3, 2)


# ----------------------------------------------------------------------------------------------------
# Unique suite labels


def test_two_question_files_of_one_name_get_their_own_answer_folders(tmp_path):
    rows = small_questions()
    a = question_file(tmp_path / "a", rows[:2])
    b = question_file(tmp_path / "b", [dict(r, question_id=r["question_id"] + 10) for r in rows[2:]])
    out = tmp_path / "run"
    args = eval_args(out)
    args[args.index("--methods") + 1] = "ar"
    result = run(*with_suite(args, f"jsonl:{a}", f"jsonl:{b}"))
    assert result.exit_code == 0, result.output
    ids = {
        p.parent.name: [json.loads(line)["question_id"] for line in p.read_text().splitlines()]
        for p in (out / "answers").glob("*/ar.jsonl")
    }
    assert ids == {
        "jsonl-question-a": [r["question_id"] for r in rows[:2]],
        "jsonl-question-b": [r["question_id"] + 10 for r in rows[2:]],
    }
    info = json.loads((out / "config.json").read_text())["suites_info"]
    assert [(s["name"], Path(s["source"]).parent.name) for s in info] == [
        ("jsonl-question-a", "a"),
        ("jsonl-question-b", "b"),
    ]


def test_the_same_suite_twice_is_refused(tmp_path):
    out = tmp_path / "run"
    result = run(*with_suite(eval_args(out), f"jsonl:{QUESTIONS}", f"jsonl:{QUESTIONS}"))
    assert_one_line_error(result, "same suite", "list it once")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# Run-folder lock


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock, as a running eval would."""
    script = (
        "import fcntl, sys, time\n"
        "f = open(sys.argv[1], 'a')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_eval_on_a_locked_folder_is_refused(finished_run):
    out, _, args = finished_run
    before = snapshot(out)
    holder = hold_lock(out / ".lock")
    try:
        assert_one_line_error(run(*args, "--resume"), "in use by another specbench eval", str(out))
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(out) == before
    assert run(*args, "--resume").exit_code == 0  # released: the resume goes ahead


def test_lock_is_held_while_the_model_loads_and_a_failed_start_leaves_no_folder(tmp_path, monkeypatch):
    import specbench_cli.models as models
    from specbench_cli.types import SpecbenchError

    out = tmp_path / "run"
    seen = {}

    def probing_load_model(*args, **kwargs):
        fd = os.open(out / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen["locked"] = False
        except BlockingIOError:
            seen["locked"] = True
        finally:
            os.close(fd)
        seen["files"] = sorted(p.name for p in out.iterdir())
        raise SpecbenchError("simulated load failure")

    monkeypatch.setattr(models, "load_model", probing_load_model)
    assert_one_line_error(run(*eval_args(out)), "simulated load failure")
    assert seen == {"locked": True, "files": [".lock"]}
    assert not out.exists()  # created for the run, removed again: nothing was written


def test_eval_times_answers_with_the_collector_paused_and_the_warm_heap_frozen(tmp_path, monkeypatch):
    # A full collection over the compiled process stalled one timed H200 answer for 1.44 s (quiet_gc.py).
    import gc

    from specbench_cli import evaluate

    seen = []
    real = evaluate.answer_question

    def spy(*args, **kwargs):
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "answer_question", spy)
    assert gc.isenabled()
    result = run(*eval_args(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert seen and all(not enabled and frozen > 0 for enabled, frozen in seen), seen
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the process is left as it was
