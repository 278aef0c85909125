"""Report metrics against an independent computation from hand-built answer records, and the files it writes.

The run below has suites s1 (two categories) and s2, methods `ar`, `pld` (lossless, but its output
differs from ar on one question, as bf16 noise would make it) and `fast` (lossy: marked so, faster
than everything, so it must never be called the best lossless method). pld also answers a question ar
did not, which must stay out of speedup and lossless.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import random
import uuid

import pandas as pd
import pytest
from rich.console import Console

from specbench_cli.report import make_report
from specbench_cli.report.metrics import ALL, COLUMNS, OVERALL, summarise
from specbench_cli.results import RunPaths, append_answer
from specbench_cli.types import SpecbenchError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_answer(rng, suite, qid, category, method, turns_ids, max_accept, tokens_per_s, lossless=True):
    """One answer line whose per-step lists are consistent with its token ids (prefill = first step)."""
    choice = {
        k: [] for k in ("accept_lengths", "draft_nodes", "draft_depth", "t_draft", "t_verify", "t_other")
    }
    choice.update(index=0, turns=[], new_tokens=[], wall_time=[], decoding_steps=[], prefill_time=[])
    choice.update(output_ids=[], stop_reason=[])
    for ids in turns_ids:
        accepts = [1]  # the prefill commits one token
        while sum(accepts) < len(ids):
            accepts.append(min(rng.randint(1, max_accept), len(ids) - sum(accepts)))
        depths = [0] + [0 if max_accept == 1 else max_accept - 1 for _ in accepts[1:]]
        nodes = [0] + [d * rng.randint(1, 3) for d in depths[1:]]  # a tree has at least `depth` nodes
        choice["accept_lengths"] += accepts
        choice["draft_depth"] += depths
        choice["draft_nodes"] += nodes
        for _ in accepts:
            choice["t_draft"].append(rng.uniform(0, 0.002) if max_accept > 1 else 0.0)
            choice["t_verify"].append(rng.uniform(0.01, 0.02))
            choice["t_other"].append(rng.uniform(0, 0.001))
        choice["turns"].append(" ".join(map(str, ids)))
        choice["new_tokens"].append(len(ids))
        choice["wall_time"].append(len(ids) / tokens_per_s * rng.uniform(0.8, 1.25))
        choice["decoding_steps"].append(len(accepts))
        choice["prefill_time"].append(0.01)
        choice["output_ids"].append(list(ids))
        choice["stop_reason"].append("length")
    return {
        "question_id": qid,
        "category": category,
        "answer_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "model_id": "tiny-random",
        "method": method,
        "suite": suite,
        "lossless_method": lossless,
        "tstamp": 1.0,
        "choices": [choice],
    }


def synthetic_run(with_ar=True) -> list[dict]:
    rng = random.Random(1234)
    questions = [("s1", q, "writing" if q < 3 else "coding") for q in range(6)] + [
        ("s2", q, "qa") for q in range(2)
    ]
    records = []
    for suite, qid, category in questions:
        turns = [[rng.randrange(500) for _ in range(rng.randint(5, 40))] for _ in range(rng.randint(1, 2))]
        if with_ar:
            records.append(make_answer(rng, suite, qid, category, "ar", turns, 1, 50.0))
        pld_turns = turns if (suite, qid) != ("s1", 4) else [turns[0][:-1] + [999]] + turns[1:]
        records.append(make_answer(rng, suite, qid, category, "pld", pld_turns, 4, 90.0))
        lossy_turns = [t[:3] + [7] + t[4:] for t in turns] if qid % 2 else turns
        records.append(make_answer(rng, suite, qid, category, "fast", lossy_turns, 6, 400.0, lossless=False))
        # `fast` drafts on a graph runner: the GPU time of its draft forwards is part of its t_draft.
        fast = records[-1]["choices"][0]
        fast["t_draft_forward"] = [t * rng.uniform(0.5, 1.0) for t in fast["t_draft"]]
    # Answered by pld only: counts for pld's own rows, never for speedup or lossless.
    records.append(make_answer(rng, "s1", 100, "coding", "pld", [[1, 2, 3, 4, 5, 6]], 4, 10.0))
    return records


def expected_row(records, suite, category, method) -> dict:
    """The metrics of one summary row, computed straight from the records with plain loops."""

    def selected(rec, m):
        return (
            rec["method"] == m
            and suite in (ALL, rec["suite"])
            and category in (ALL, OVERALL, rec["category"])
        )

    mine = [r for r in records if selected(r, method)]
    ar = {(r["suite"], r["question_id"]): r for r in records if selected(r, "ar")}
    c = [r["choices"][0] for r in mine]
    new = sum(sum(x["new_tokens"]) for x in c)
    steps = sum(sum(x["decoding_steps"]) for x in c)
    wall = sum(sum(x["wall_time"]) for x in c)
    accepted = sum(a - 1 for x in c for a in x["accept_lengths"])
    nodes = sum(sum(x["draft_nodes"]) for x in c)
    depth = sum(sum(x["draft_depth"]) for x in c)
    # Step times over the decoding steps; each turn's first step is its prefill.
    firsts = [set(itertools.accumulate([0, *x["decoding_steps"][:-1]])) for x in c]
    n_steps = sum(len(x["t_verify"]) - len(f) for x, f in zip(c, firsts))
    td, tv, to = (
        sum(t for x, f in zip(c, firsts) for i, t in enumerate(x[k]) if i not in f)
        for k in ("t_draft", "t_verify", "t_other")
    )
    td += sum(x["t_draft"][i] for x, f in zip(c, firsts) for i in f)  # the drafter's setup per turn
    prefill = sum(x["t_verify"][i] for x, f in zip(c, firsts) for i in f)
    turns = sum(len(f) for f in firsts)
    pairs = [(r, ar[(r["suite"], r["question_id"])]) for r in mine if (r["suite"], r["question_id"]) in ar]
    nan = float("nan")

    def tok_s(recs):
        return sum(sum(r["choices"][0]["new_tokens"]) for r in recs) / sum(
            sum(r["choices"][0]["wall_time"]) for r in recs
        )

    return {
        "questions": len(mine),
        "new_tokens": new,
        "steps": steps,
        "mean_accepted_length": new / steps,
        "acceptance_rate": accepted / nodes if nodes else nan,
        "accepted_per_depth": accepted / depth if depth else nan,
        "tokens_per_s": new / wall,
        "speedup": tok_s([m for m, _ in pairs]) / tok_s([a for _, a in pairs]) if pairs else nan,
        # Spec-Bench's speed.py: mean of the method's per-question tok/s over the mean of ar's.
        "speedup_mean": (
            (sum(tok_s([m]) for m, _ in pairs) / len(pairs))
            / (sum(tok_s([a]) for _, a in pairs) / len(pairs))
            if pairs
            else nan
        ),
        "lossless": (
            sum(m["choices"][0]["output_ids"] == a["choices"][0]["output_ids"] for m, a in pairs) / len(pairs)
            if pairs
            else nan
        ),
        "t_draft_ms": 1000 * td / n_steps,
        "t_verify_ms": 1000 * tv / n_steps,
        "t_other_ms": 1000 * to / n_steps,
        "overhead_frac": (td + to) / (td + tv + to),
        "prefill_ms": 1000 * prefill / turns,
        "draft_host_ratio": (
            td / sum(sum(x["t_draft_forward"]) for x in c) if all("t_draft_forward" in x for x in c) else nan
        ),
        "lossless_method": all(r["lossless_method"] for r in mine),
    }


def check_against_records(df, records):
    for row in df.to_dict("records"):
        want = expected_row(records, row["suite"], row["category"], row["method"])
        for key, value in want.items():
            assert row[key] == pytest.approx(value, nan_ok=True), (
                row["suite"],
                row["category"],
                row["method"],
                key,
            )


def write_run(tmp_path, records) -> RunPaths:
    paths = RunPaths(tmp_path / "run1")
    for rec in records:
        append_answer(paths.answers_file(rec["suite"], rec["method"]), rec)
    paths.config.write_text(json.dumps({"methods": ["ar", "pld", "fast"]}))
    return paths


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=240)


def test_summary_rows_and_metrics_match_the_records():
    records = synthetic_run()
    df = summarise(records)
    assert list(df.columns) == COLUMNS
    keys = list(zip(df["suite"], df["category"], df["method"], strict=True))
    assert len(keys) == len(set(keys))
    want_keys = {(r["suite"], r["category"], r["method"]) for r in records}
    want_keys |= {(r["suite"], OVERALL, r["method"]) for r in records}
    want_keys |= {(ALL, ALL, r["method"]) for r in records}
    assert set(keys) == want_keys
    assert df["method"].iloc[0] == "ar"  # the baseline leads every block
    check_against_records(df, records)


def test_step_times_leave_each_turns_prefill_out_and_report_it_apart():
    """A long prompt's prefill is one step of the turn: averaged into t_verify it would pass for slow
    verification (and shrink the overhead share), so it gets its own column."""
    record = make_answer(random.Random(3), "s", 1, "c", "pld", [list(range(9)), list(range(7))], 3, 100.0)
    choice = record["choices"][0]
    first_of_second = choice["decoding_steps"][0]
    for steps in (choice["t_draft"], choice["t_verify"], choice["t_other"]):
        steps[:] = [0.001] * len(steps)
    for i in (0, first_of_second):  # each turn's prefill: a 90 ms forward after 3 ms of drafter setup
        choice["t_draft"][i], choice["t_verify"][i], choice["t_other"][i] = 0.003, 0.09, 0.0
    decoding = sum(choice["decoding_steps"]) - 2
    row = summarise([record]).iloc[-1]
    assert row["t_verify_ms"] == pytest.approx(1.0) and row["t_other_ms"] == pytest.approx(1.0)
    assert row["t_draft_ms"] == pytest.approx(1.0 + 6.0 / decoding)  # the setup counts as drafting
    assert row["overhead_frac"] == pytest.approx((decoding * 2 + 6) / (decoding * 3 + 6))
    assert row["prefill_ms"] == pytest.approx(90.0)
    assert row["steps"] == sum(choice["decoding_steps"])  # MAT still counts the prefill as a step


def test_baseline_and_method_sanity():
    df = summarise(synthetic_run()).set_index(["suite", "category", "method"])
    ar = df.loc[(ALL, ALL, "ar")]
    assert ar["mean_accepted_length"] == 1.0 and ar["speedup"] == 1.0 and ar["lossless"] == 1.0
    assert math.isnan(ar["acceptance_rate"])  # nothing drafted
    # pld differs from ar on exactly one of the questions ar answered, and s1/writing has none of them.
    assert df.loc[("s1", "writing", "pld"), "lossless"] == 1.0
    assert df.loc[("s1", "coding", "pld"), "lossless"] < 1.0
    assert df.loc[("s1", "coding", "pld"), "questions"] == 4  # includes question 100, which ar lacks
    assert not df.loc[(ALL, ALL, "fast"), "lossless_method"]
    assert df.loc[(ALL, ALL, "fast"), "speedup"] > df.loc[(ALL, ALL, "pld"), "speedup"] > 1.0


def test_pairing_is_per_suite():
    # Same question ids in two suites: s2's pld answers must be compared with s2's ar answers only.
    records = [r for r in synthetic_run() if not (r["suite"] == "s2" and r["method"] == "ar")]
    df = summarise(records).set_index(["suite", "category", "method"])
    assert math.isnan(df.loc[("s2", OVERALL, "pld"), "speedup"])
    assert math.isnan(df.loc[("s2", OVERALL, "pld"), "lossless"])
    check_against_records(df.reset_index(), records)


def test_without_ar_speedup_and_lossless_are_nan(tmp_path):
    records = synthetic_run(with_ar=False)
    df = summarise(records)
    assert df[["speedup", "speedup_mean", "lossless"]].isna().all().all()
    assert df["tokens_per_s"].notna().all()
    check_against_records(df, records)

    console = quiet_console()
    make_report(write_run(tmp_path, records).root, console=console)
    assert "No `ar` answers" in console.file.getvalue()


def test_make_report_writes_every_file(tmp_path):
    records = synthetic_run()
    paths = write_run(tmp_path, records)
    console = quiet_console()
    df = make_report(paths.root, console=console)

    check_against_records(df, records)
    summary = json.loads(paths.summary_json.read_text(), parse_constant=pytest.fail)  # strict: no NaN
    assert summary["config_file"] == "config.json" and len(summary["config_sha256"]) == 64
    assert len(summary["rows"]) == len(df)
    assert summary["rows"][0]["acceptance_rate"] is None  # ar drafts nothing: null, not NaN

    csv = pd.read_csv(paths.summary_csv)
    assert list(csv.columns) == COLUMNS and len(csv) == len(df)
    assert csv["speedup"].to_numpy() == pytest.approx(df["speedup"].to_numpy(), rel=1e-5, nan_ok=True)
    assert "| suite" in paths.summary_md.read_text()
    tex = paths.summary_tex.read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "fast (lossy)" in tex

    for name in ("speedup.png", "accepted_length.png", "time_breakdown.png"):
        data = (paths.plots_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not [p for p in paths.root.rglob("*") if p.name.endswith(".tmp")]

    screen = console.file.getvalue()
    assert "fast (lossy)" in screen
    best = next(line for line in screen.splitlines() if line.startswith("Best lossless method"))
    assert best.startswith("Best lossless method: pld,")  # fast is faster but lossy
    assert "fast" not in best.split("Lossy methods")[0]


def test_make_report_without_write_writes_nothing(tmp_path):
    paths = write_run(tmp_path, synthetic_run())
    before = sorted(p.relative_to(paths.root) for p in paths.root.rglob("*"))
    make_report(paths.root, console=quiet_console(), write=False)
    assert sorted(p.relative_to(paths.root) for p in paths.root.rglob("*")) == before


def test_make_report_refuses_folders_without_answers(tmp_path):
    with pytest.raises(SpecbenchError, match="no answers"):
        make_report(tmp_path, console=quiet_console())
    with pytest.raises(SpecbenchError, match="does not exist"):
        make_report(tmp_path / "nope", console=quiet_console())
    empty = RunPaths(tmp_path).answers_file("s1", "ar")
    empty.parent.mkdir(parents=True)
    empty.write_text("")
    with pytest.raises(SpecbenchError, match="no answers"):
        make_report(tmp_path, console=quiet_console())
    assert not RunPaths(tmp_path).summary_json.exists()


def test_malformed_answer_names_the_question():
    bad = synthetic_run()[:2]
    del bad[1]["choices"][0]["wall_time"]
    with pytest.raises(SpecbenchError, match="question 0 in s1/pld"):
        summarise(bad)


def test_best_line_never_crowns_a_method_slower_than_ar():
    from specbench_cli.report.tables import best_lossless_line

    def pooled(speedup: float) -> pd.DataFrame:
        rows = [
            {"suite": ALL, "category": ALL, "method": "ar", "lossless_method": True, "speedup": 1.0, "lossless": 1.0},
            {"suite": ALL, "category": ALL, "method": "slow", "lossless_method": True, "speedup": speedup, "lossless": 1.0},
        ]  # fmt: skip
        return pd.DataFrame(rows)

    assert best_lossless_line(pooled(1.4)).startswith("Best lossless method: slow, 1.40x")
    line = best_lossless_line(pooled(0.37))
    assert line.startswith("No lossless method beat ar") and "0.37x" in line


def test_lossy_methods_get_agreement_and_quality_files(tmp_path):
    records = synthetic_run()
    paths = write_run(tmp_path, records)
    make_report(paths.root, console=quiet_console())
    rows = json.loads((paths.root / "quality.json").read_text())["lossy_methods"]
    assert {(r["suite"], r["method"]) for r in rows} == {("s1", "fast"), ("s2", "fast")}
    for row in rows:
        ar = {r["question_id"]: r for r in records if r["suite"] == row["suite"] and r["method"] == "ar"}
        mine = [r for r in records if r["suite"] == row["suite"] and r["method"] == "fast"]
        same = [
            r["choices"][0]["output_ids"] == ar[r["question_id"]]["choices"][0]["output_ids"] for r in mine
        ]
        assert row["exact_match"] == pytest.approx(sum(same) / len(same))
        assert row["quality_metric"] == "rouge_l_vs_ar" and 0.0 <= row["quality"] <= 1.0
    assert "fast" in (paths.root / "quality.md").read_text()
    # A run with no lossy method writes no quality files.
    lossless = [r for r in records if r["method"] != "fast"]
    clean = write_run(tmp_path / "clean", lossless)
    make_report(clean.root, console=quiet_console())
    assert not (clean.root / "quality.json").exists()


def test_baselines_sit_beside_ar_and_are_never_ranked(tmp_path):
    # A transformers baseline faster than every method (as if ar were slow) and with ar's output.
    records = synthetic_run()
    for rec in [r for r in records if r["method"] == "ar"]:
        base = json.loads(json.dumps(rec)) | {"method": "hf-static", "baseline": True}
        base["choices"][0]["wall_time"] = [t / 10 for t in base["choices"][0]["wall_time"]]
        records.append(base)
    df = summarise(records)
    assert list(df["method"][df["suite"] == ALL]) == ["ar", "hf-static", "fast", "pld"]
    pooled = df[df["suite"] == ALL].set_index("method")
    assert pooled.loc["hf-static", "baseline"] and not pooled.loc["pld", "baseline"]
    assert pooled.loc["hf-static", "speedup"] == pytest.approx(10.0)
    assert pooled.loc["hf-static", "lossless"] == 1.0
    console = quiet_console()
    make_report(write_run(tmp_path, records).root, console=console)
    screen = console.file.getvalue()
    assert "hf-static (baseline)" in screen
    assert next(x for x in screen.splitlines() if x.startswith("Best lossless")).startswith(
        "Best lossless method: pld,"
    )
    assert "ar runs at 0.10x hf-static (same output on 100%)" in screen


# ----------------------------------------------------------------------------------------------------
# Malformed records: named, excluded, counted


def test_a_nan_wall_time_is_excluded_visibly_and_does_not_move_the_speedup(tmp_path):
    records = synthetic_run()
    # ar's answer to s1/question 2 gets a NaN time: before validation it dragged ar's tok/s to NaN
    # (or, as inf, inflated every method's speedup).
    bad_index = next(
        i for i, r in enumerate(records) if (r["suite"], r["method"], r["question_id"]) == ("s1", "ar", 2)
    )
    bad_line = 1 + sum(1 for r in records[:bad_index] if (r["suite"], r["method"]) == ("s1", "ar"))
    records[bad_index]["choices"][0]["wall_time"][0] = float("nan")
    paths = write_run(tmp_path, records)
    console = quiet_console()
    df = make_report(paths.root, console=console)

    clean = records[:bad_index] + records[bad_index + 1 :]
    check_against_records(df, clean)  # every number as if the bad line were not there
    want = summarise(clean).set_index(["suite", "category", "method"])
    got = df.set_index(["suite", "category", "method"])
    assert got.loc[(ALL, ALL, "pld"), "speedup"] == pytest.approx(want.loc[(ALL, ALL, "pld"), "speedup"])
    assert math.isfinite(got.loc[(ALL, ALL, "pld"), "speedup"])
    assert got.loc[("s1", OVERALL, "ar"), "questions"] == 5

    warnings = [line for line in console.file.getvalue().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert f"answers/s1/ar.jsonl line {bad_line}" in warnings[0]
    assert "choices[0].wall_time[0]" in warnings[0] and "nan" in warnings[0]
    summary = json.loads(paths.summary_json.read_text())
    assert summary["excluded_records"] == 1
    assert summary["excluded"] == [
        {
            "file": "answers/s1/ar.jsonl",
            "line": bad_line,
            "question_id": 2,
            "field": "choices[0].wall_time[0]",
            "problem": "is nan, not a finite number >= 0",
        }
    ]


def test_a_clean_run_excludes_nothing(tmp_path):
    paths = write_run(tmp_path, synthetic_run())
    console = quiet_console()
    make_report(paths.root, console=console)
    assert "warning:" not in console.file.getvalue()
    assert json.loads(paths.summary_json.read_text())["excluded_records"] == 0


def _break(path: str, value):
    """A change to one field of a good record: path is `key` or `key.index` inside choices[0]."""

    def apply(record):
        choice = record["choices"][0]
        key, _, index = path.partition(".")
        if index:
            choice[key][int(index)] = value
        elif value is _DELETE:
            del choice[key]
        else:
            choice[key] = value
        return record

    return apply


_DELETE = object()


def _draft_forwards(last_inputs):
    """A change giving every step one draft forward of 16 inputs, and the last step `last_inputs`."""

    def apply(record):
        choice = record["choices"][0]
        steps = sum(choice["decoding_steps"])
        choice["draft_forwards"] = [1] * steps
        choice["draft_forward_inputs"] = [[16]] * (steps - 1) + [last_inputs]
        return record

    return apply


def _sizes_without_forwards(record):
    """Draft-forward sizes, but no count of the forwards they size."""
    record = _draft_forwards([16])(record)
    del record["choices"][0]["draft_forwards"]
    return record


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_break("wall_time.0", -0.5), "wall_time[0]"),
        (_break("wall_time.0", float("inf")), "wall_time[0]"),
        (_break("wall_time.0", 0.0), "wall_time[0]"),  # tokens in no time: infinite speed
        (_break("wall_time.0", "1.0"), "wall_time[0]"),
        (_break("new_tokens.0", -3), "new_tokens[0]"),
        (_break("new_tokens.0", 2.5), "new_tokens[0]"),
        (_break("decoding_steps.0", True), "decoding_steps[0]"),
        (_break("t_verify.0", float("nan")), "t_verify[0]"),
        (_break("draft_nodes.0", -1), "draft_nodes[0]"),
        (_break("wall_time", [0.1, 0.2, 0.3]), "wall_time"),  # 3 times for 1 turn
        (_break("new_tokens", _DELETE), "new_tokens"),
        (_break("t_draft", [0.0]), "t_draft"),  # per-step lists of different lengths
        (_break("output_ids", [[1, 2, 3]]), "output_ids[0]"),  # 3 ids, but new_tokens says otherwise
        (_break("decoding_steps.0", 1), "accept_lengths"),  # steps no longer match the per-step lists
        (_break("accept_lengths.1", 9), "accept_lengths"),  # commits more tokens than the turn has
        (_draft_forwards([16, 16]), "draft_forward_inputs[-1]"),  # two sizes for one forward
        (_draft_forwards([-16]), "draft_forward_inputs[-1]"),
        (_draft_forwards([0]), "draft_forward_inputs[-1]"),  # a forward of no inputs
        (_sizes_without_forwards, "draft_forward_inputs"),
        (_draft_forwards(16), "draft_forward_inputs[-1]"),  # not a list
        (lambda r: r | {"lossless_method": "false"}, "lossless_method"),
        (lambda r: r | {"choices": []}, "choices"),
    ],
)
def test_record_problem_names_the_field(change, field):
    from specbench_cli.report.validate import record_problem

    rng = random.Random(7)
    good = make_answer(rng, "s1", 1, "qa", "pld", [list(range(30))], 4, 90.0)
    assert record_problem(good) is None
    assert record_problem(_draft_forwards([16])(copy.deepcopy(good))) is None
    problem = record_problem(change(good))
    assert problem is not None
    steps = sum(good["choices"][0]["decoding_steps"])
    assert problem[0].removeprefix("choices[0].") == field.replace("[-1]", f"[{steps - 1}]"), problem


def test_plain_spec_bench_records_still_pass():
    from specbench_cli.report.validate import record_problem

    # Spec-Bench's own files: no ids, no step timings, steps counted their own way.
    record = {
        "question_id": 81,
        "category": "writing",
        "choices": [
            {"index": 0, "turns": ["a", "b"], "new_tokens": [40, 30], "wall_time": [1.2, 0.9],
             "decoding_steps": [20, 16], "accept_lengths": [2, 2, 3, 1, 2]}
        ],
    }  # fmt: skip
    assert record_problem(record) is None


def test_report_refuses_when_every_record_is_malformed(tmp_path):
    records = synthetic_run()[:1]
    records[0]["choices"][0]["new_tokens"][0] = -1
    paths = write_run(tmp_path, records)
    with pytest.raises(SpecbenchError, match=r"all 1 answer records .* malformed.*new_tokens\[0\]"):
        make_report(paths.root, console=quiet_console())
