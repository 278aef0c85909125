"""Bad input, as a hostile new user types it: one line naming the value, exit 2, no traceback, and
not one file written. Nearly every case fails before a model loads, so the whole file runs in seconds.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from specbench_cli import inputs
from specbench_cli.cli import app

QUESTIONS = Path(__file__).parent / "fixtures" / "questions_small.jsonl"
runner = CliRunner()
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in root.rglob("*")}


def eval_args(out: Path, *extra: str, suite: str | None = None) -> list[str]:
    return [
        "eval", "--model", "tiny-random", "--suite", suite or f"jsonl:{QUESTIONS}", "--methods", "ar",
        "--max-new-tokens", "4", "--warmup", "0", "--limit", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def with_option(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag` set to `value` (replaced where present, else appended)."""
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


def refused(root: Path, args: list[str], *needles: str, lines: int = 1, env: dict | None = None) -> str:
    """Run the CLI in-process and check the contract; returns the error line."""
    before = snapshot(root)
    result = runner.invoke(app, args, env=env)
    text = result.output.strip()
    assert result.exit_code == 2, (args, text, result.exception)
    assert "Traceback" not in text, text
    out = text.splitlines()
    # `lines` > 1 only where the model had to load first ("loading ..." precedes the error)
    assert len(out) == lines and out[-1].startswith("error: "), text
    for needle in needles:
        assert needle in out[-1], (needle, out[-1])
    assert snapshot(root) == before, "bad input wrote files"
    return out[-1]


# ----------------------------------------------------------------------------------------------------
# eval: numbers and names


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--temperature", "nan", "nan"),
        ("--temperature", "inf", "inf"),
        ("--temperature", "-1", "-1"),
        ("--temperature", "1e-300", "1e-300"),
        ("--seed", "1000000000000000000000000000000", "1000000000000000000000000000000"),
        ("--seed", "-1", "-1"),
        ("--max-new-tokens", "1000000000000", "1000000000000"),
        ("--max-new-tokens", "0", "got 0"),
        ("--threads", "1000000", "1000000"),
        ("--threads", "0", "got 0"),
        ("--suite", "", "--suite is empty"),
        ("--suite", " , ", "--suite is empty"),
        ("--warmup", "-3", "-3"),
        ("--warmup", "1000000", "1000000"),
        ("--limit", "0", "got 0"),
        ("--limit", "-1", "-1"),
        ("--device", "cuda:x", "cuda:x"),
        ("--device", "tpu", "tpu"),
        ("--dtype", "float8", "float8"),
        ("--model", " ", "--model is empty"),
        ("--draft-model", "", "--draft-model is empty"),
        ("--seed", "abc", "'abc'"),
        ("--temperature", "warm", "'warm'"),
        ("--threads", "1.5", "'1.5'"),
    ],
)
def test_bad_eval_value_is_refused_before_anything_loads(tmp_path, flag, value, needle):
    line = refused(tmp_path, with_option(eval_args(tmp_path / "run"), flag, value), needle)
    assert flag in line or flag.lstrip("-") in line


INT_BOUNDS = {
    "--seed": (0, inputs.SEED_MAX),
    "--max-new-tokens": (1, inputs.MAX_NEW_TOKENS),
    "--threads": (1, inputs.max_threads()),
    "--warmup": (0, inputs.MAX_WARMUP),
    "--limit": (1, None),
}
# Text that neither int() nor float() reads as a number: it holds a letter (other than an exponent).
GARBAGE = st.text(min_size=1, max_size=30).filter(lambda s: any(c.isalpha() and c not in "eE" for c in s))


def out_of_range(flag: str):
    low, high = INT_BOUNDS[flag]
    return st.integers(min_value=-(10**40), max_value=10**40).filter(
        lambda v: v < low or (high is not None and v > high)
    )


@FAST
@given(data=st.data())
@pytest.mark.parametrize("flag", sorted(INT_BOUNDS))
def test_random_garbage_for_integer_options(tmp_path, flag, data):
    value = data.draw(st.one_of(GARBAGE, out_of_range(flag).map(str)))
    refused(tmp_path, eval_args(tmp_path / "run", f"{flag}={value}"), flag)


def bad_temperature(t: float) -> bool:
    return not math.isfinite(t) or t < 0 or 0 < t < inputs.MIN_TEMPERATURE


@FAST
@given(value=st.one_of(GARBAGE, st.floats().filter(bad_temperature).map(repr)))
def test_random_garbage_for_temperature(tmp_path, value):
    refused(tmp_path, eval_args(tmp_path / "run", f"--temperature={value}"), "--temperature")


# ----------------------------------------------------------------------------------------------------
# eval: suite files


def suite_file(folder: Path, data: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bad.jsonl"
    path.write_bytes(data)
    return f"jsonl:{path}"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b'{"question_id": 1, "category": "x", "turns": ["hi"]}\n' + b"[" * 100_000 + b"]" * 100_000, ":2: "),
        (b'{"turns": ' * 100_000, ":1: "),
        (b"\xff\xfe\x00 not text\n", "not UTF-8"),
        (b"", "no questions"),
        (b"\n  \n\n", "no questions"),
        (b'{"question_id": 1, "category": "x", "turns": []}\n', ":1: "),
        (b'{"question_id": [1], "category": "x", "turns": ["a"]}\n', ":1: "),
    ],
    ids=["nested-100k", "unclosed-100k", "not-utf8", "empty", "blank", "no-turns", "list-id"],
)
def test_bad_suite_file_is_named_with_its_line(tmp_path, data, needle):
    spec = suite_file(tmp_path / "suite", data)
    (tmp_path / "run-parent").mkdir()
    refused(
        tmp_path / "run-parent", eval_args(tmp_path / "run-parent" / "run", suite=spec), "bad.jsonl", needle
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@FAST
@given(
    lines=st.lists(
        st.one_of(st.binary(min_size=1, max_size=40), JSON_VALUES.map(lambda v: json.dumps(v).encode())),
        min_size=1,
        max_size=3,
    )
)
def test_random_malformed_jsonl_lines(tmp_path, lines):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        spec = suite_file(Path(folder), b"\n".join(lines) + b"\n")
        out_root = Path(folder) / "runs"
        out_root.mkdir()
        refused(out_root, eval_args(out_root / "run", suite=spec), "bad.jsonl")


# ----------------------------------------------------------------------------------------------------
# eval: the run folder


def test_out_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(tmp_path, eval_args(tmp_path / "afile" / "run"), "--out", "is a file")


def test_out_in_a_place_that_cannot_be_written(tmp_path):
    # /sys refuses new folders (EPERM for root, no write access for others): a real read-only place.
    refused(tmp_path, eval_args(Path("/sys/specbench-probe/run")), "--out", "/sys/specbench-probe")


def test_out_in_a_read_only_folder(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # enough on its own for a normal user; root writes anyway, hence the stand-in
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    try:
        refused(tmp_path, eval_args(locked / "run"), "--out", "not writable")
    finally:
        locked.chmod(0o755)


def test_full_disk_mid_run_is_one_line_and_the_folder_resumes(tmp_path, monkeypatch):
    from specbench_cli import results

    out = tmp_path / "run"
    args = eval_args(out, "--limit", "2")
    real_append, calls = results.append_answer, []

    def fill_disk(path: Path, record: dict) -> None:
        calls.append(path)
        if len(calls) < 2:
            return real_append(path, record)
        with open(path, "ab") as f:  # the disk fills halfway through the second line
            f.write(json.dumps(record).encode()[:40])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results, "append_answer", fill_disk)
    result = runner.invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert lines[-1].startswith("error: No space left on device") and "--resume" in lines[-1]
    answers = next(out.glob("answers/*/ar.jsonl"))
    first = answers.read_bytes().split(b"\n")[0]
    assert (out / "config.json").is_file() and len(first) > 40

    monkeypatch.setattr(results, "append_answer", real_append)
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    kept = answers.read_bytes().splitlines()
    assert kept[0] == first  # the answer made before the disk filled is kept as it was
    ids = [json.loads(line)["question_id"] for line in kept]  # the cut line is gone: every line parses
    assert len(ids) == 2 and len(set(ids)) == 2


def test_full_disk_before_the_first_answer_leaves_no_folder(tmp_path, monkeypatch):
    from specbench_cli import results

    def no_space(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results, "write_json_atomic", no_space)
    refused(tmp_path, eval_args(tmp_path / "run"), "No space left on device", "config.json", lines=3)


# ----------------------------------------------------------------------------------------------------
# eval: checks that need the model's config (it loads, but nothing is written)


def test_max_new_tokens_beyond_the_models_context(tmp_path):
    refused(
        tmp_path, eval_args(tmp_path / "run", "--max-new-tokens", "5000"), "5000", "context of 2048", lines=2
    )


def test_prompt_longer_than_the_models_context_names_suite_and_question(tmp_path):
    row = {"question_id": "long-one", "category": "x", "turns": ["word " * 3000]}
    spec = suite_file(tmp_path / "suite", (json.dumps(row) + "\n").encode())
    refused(tmp_path, eval_args(tmp_path / "run", suite=spec), "jsonl-bad", "'long-one'", "context", lines=2)


# ----------------------------------------------------------------------------------------------------
# report and build-index


def test_report_on_things_that_are_not_runs(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    refused(tmp_path, ["report", str(tmp_path / "afile")], "afile", "is a file")
    refused(tmp_path, ["report", str(tmp_path / "empty")], "empty", "not a run folder")
    refused(tmp_path, ["report", str(tmp_path / "missing")], "missing", "does not exist")


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--corpus", "", "--corpus is empty"),
        ("--model", "", "--model is empty"),
        ("--batch-size", "0", "--batch-size"),
        ("--max-new-tokens", "1000000000000", "1000000000000"),
        ("--max-docs", "0", "--max-docs"),
        ("--opt", "dim=-4", "unknown rest datastore option"),
        ("--opt", "nprobe", "KEY=VALUE"),
        ("--device", "gpu", "gpu"),
        ("--dtype", "int4", "int4"),
        ("--text-key", " ", "--text-key"),
        ("--layer", "x", "--layer"),  # dresd's options are --opt layer=N now
    ],
)
def test_bad_build_index_value_is_refused_before_anything_loads(tmp_path, flag, value, needle):
    args = ["build-index", "--method", "rest", "--model", "tiny-random", "--corpus", str(QUESTIONS),
            "--out", str(tmp_path / "store")]  # fmt: skip
    refused(tmp_path, with_option(args, flag, value), needle)


def test_build_index_out_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    args = ["build-index", "--method", "rest", "--model", "tiny-random", "--corpus", str(QUESTIONS),
            "--out", str(tmp_path / "afile" / "store")]  # fmt: skip
    refused(tmp_path, args, "--out", "is a file")


# ----------------------------------------------------------------------------------------------------
# the boundary itself


def test_usage_errors_are_one_line(tmp_path):
    refused(tmp_path, ["eval", "--model", "tiny-random"], "Missing option")
    refused(tmp_path, ["eval", "--no-such-flag"], "--no-such-flag")
    refused(tmp_path, ["no-such-command"], "no-such-command")


def test_an_internal_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    from specbench_cli import suites

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in specbench")

    monkeypatch.setattr(suites, "load_suites", broken)
    result = runner.invoke(app, eval_args(tmp_path / "run"))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "internal error: ZeroDivisionError: a bug in specbench (rerun with --debug or SPECBENCH_DEBUG=1 "
        "for the traceback)"
    ]
    assert not (tmp_path / "run").exists()
    for env, args in (({}, ["--debug"]), ({"SPECBENCH_DEBUG": "1"}, [])):
        result = runner.invoke(app, [*args, *eval_args(tmp_path / "run")], env=env)
        assert (
            result.exit_code == 1 and "Traceback" in result.output and "a bug in specbench" in result.output
        )
    # --debug is per call: the next call in this process is quiet again
    result = runner.invoke(app, eval_args(tmp_path / "run"))
    assert "Traceback" not in result.output


def test_ctrl_c_is_a_resumable_stop(tmp_path, monkeypatch):
    from specbench_cli import suites

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(suites, "load_suites", interrupted)
    result = runner.invoke(app, eval_args(tmp_path / "run"))
    assert result.exit_code == 130 and re.search(r"interrupted.*--resume", result.output)
    assert not (tmp_path / "run").exists()
