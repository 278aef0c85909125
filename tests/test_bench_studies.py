"""The bench studies run on the CPU on a tiny shape and write the JSON their readers expect.

They are scripts (bench/*.py, not a package); their main(argv) is called here as the command line would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

CPU = ["--device", "cpu", "--threads", "1", "--max-len", "512"]


def test_micro_on_a_tiny_shape(tmp_path):
    import micro

    out = tmp_path / "micro.json"
    micro.main(
        [
            "--out",
            str(out),
            "--shape",
            "tiny",
            *CPU,
            "--variants",
            "tree:efficient:eager,packed:efficient:eager",
        ]
        + ["--reps", "2", "--new-tokens", "16"]
    )
    data = json.loads(out.read_text())
    assert {"machine", "device", "dtype", "shapes"} <= set(data) and data["device"] == "cpu"
    tiny = data["shapes"]["tiny"]
    assert tiny["fp32_max_rel_logit_diff"] < 1e-4
    assert tiny["fp32_greedy_equal_to_eager_ar"] == {"ar": True, "random-trees": True}
    for variant in ("tree:efficient:eager", "packed:efficient:eager"):
        v = tiny["variants"][variant]
        assert v["check_vs_eager"]["ok"], v
        assert set(v["forward_ms"]) >= {"1", "16"} and all(ms > 0 for ms in v["forward_ms"].values())
        assert v["ar_tokens_per_s"] > 0
    base = tiny["baselines"]
    assert base["ar_eager_tokens_per_s"] > 0
    assert base["hf-eager"]["tokens_per_s"] > 0 and base["hf-static"]["tokens_per_s"] > 0


def _check_profile(entry: dict, sizes: list[str]) -> None:
    assert set(entry["sizes"]) == set(sizes)
    for row in entry["sizes"].values():
        assert row["forward_ms"] > 0 and row["kernel_ms_per_forward"] > 0 and row["kernels_per_forward"] > 0
        assert 0 < len(row["top"]) <= 5
        totals = [k["total_us"] for k in row["top"]]
        assert totals == sorted(totals, reverse=True) and totals[0] > 0
        assert all(k["name"] and k["count"] > 0 and 0 < k["share"] <= 1 for k in row["top"])


@pytest.mark.parametrize("source", [["--shape", "tiny"], ["--model", "tiny-random"]])
def test_profile_kernel_table_per_size(tmp_path, source, capsys):
    import profile_forward

    out = tmp_path / "profile.json"
    argv = ["--out", str(out), *source, *CPU, "--variants", "eager,tree:efficient:eager", "--sizes", "1,16"]
    argv += ["--context", "100", "--reps", "2", "--profile-reps", "2", "--top", "5"]
    profile_forward.main(argv)
    data = json.loads(out.read_text())
    assert {"machine", "device", "dtype", "context", "models"} <= set(data)
    (label,) = data["models"]
    assert label == ("random:tiny" if source[0] == "--shape" else "tiny-random")
    for variant in ("eager", "tree:efficient:eager"):
        _check_profile(data["models"][label][variant], ["1", "16"])
    # The same run compared with itself: every kernel lines up by name.
    profile_forward.main(argv[:1] + [str(tmp_path / "again.json")] + argv[2:] + ["--compare", str(out)])
    assert "size 16: forward" in capsys.readouterr().out


def test_datastores_at_scale_on_a_small_folder(tmp_path):
    import sysconfig

    import datastores_at_scale

    out = tmp_path / "scale.json"
    folder = Path(sysconfig.get_paths()["stdlib"]) / "json"  # a handful of real .py files, by path
    args = ["--corpus", str(folder), "--model", "tiny-random", "--chunk-tokens", "20000"]
    args += ["--tokens-limit", "60000", "--sam-tokens", "30000", "--shard-tokens", "12000", "--queries", "30"]
    datastores_at_scale.main(args + ["--work", str(tmp_path / "work"), "--out", str(out)])
    data = json.loads(out.read_text())
    builds = data["builds"]
    chunked, one, sam = builds["rest-chunked"], builds["rest-one"], builds["sam"]
    assert chunked["corpus"]["file_count"] >= 3 and chunked["tokens"] >= 60000 - 20000
    assert chunked["chunks"] >= 3 and max(chunked["chunk_tokens"]) <= 20000 and one["chunks"] == 1
    assert one["tokens"] == chunked["tokens"] and one["documents"] == chunked["documents"]
    assert data["chunked_equals_one_array"] == {"same_trees": 30, "queries": 30}
    assert 30000 <= sam["tokens"] <= chunked["tokens"]
    assert (
        sam["shards"] >= 2
        and builds["sam-one"]["shards"] == 1
        and builds["sam-one"]["tokens"] == sam["tokens"]
    )
    assert data["sharded_equals_one_automaton"] == {"same_matches": 30, "queries": 30}
    assert sam["stored_bytes_per_token"] < sam["live_bytes_per_token"]
    assert sam["states"] > sam["tokens"] and sam["edges"] > 0
    for row in (chunked, one):
        p = row["lookups"]["propose"]
        assert 0 < p["p50_ms"] <= p["p99_ms"] and 0 < row["lookups"]["drafted_fraction"] <= 1
        assert row["bytes_on_disk"] > 8 * row["tokens"]  # uint32 tokens + int32 suffix array + separators
    assert sam["lookups"]["walk_per_token"]["p50_ms"] > 0
    assert not (tmp_path / "work" / "rest-chunked").exists()  # stores are not kept by default


@pytest.mark.parametrize("no_faiss", [False, True])
def test_dense_at_scale_on_a_tiny_shape(tmp_path, no_faiss, monkeypatch):
    """The dense-store study end to end, with faiss and as on the GPU machine without it."""
    import dense_at_scale

    from specbench_cli.datastores import dense_search

    out = tmp_path / "dense.json"
    argv = ["--out", str(out), "--device", "cpu", "--shape", "tiny", "--extract-tokens", "1500"]
    argv += ["--rows-per-batch", "4", "--row-tokens", "200", "--sizes", "2000,12000", "--flat-max", "5000"]
    argv += ["--queries", "10", "--recall-queries", "50", "--nprobe", "8", "--dim", "16"]
    # --no-faiss replaces dense_search.faiss_module; monkeypatch puts the real one back afterwards.
    monkeypatch.setattr(dense_search, "faiss_module", dense_search.faiss_module)
    dense_at_scale.main(argv + (["--no-faiss"] if no_faiss else []))
    data = json.loads(out.read_text())
    ext = data["extraction"]
    assert (
        ext["tokens"] >= 1500
        and ext["tokens_per_s"] > 0
        and ext["pca"]["keys"] == ext["tokens"] - ext["documents"]
    )
    build = ext["build"]  # the product's build over the same documents: one key per position
    assert build["vectors"] == ext["pca"]["keys"] and build["tokens_per_s"] > 0 and build["index"] == "Flat"
    flat, ivf = data["search"]["sizes"]
    assert (flat["keys"], flat["index"], flat["recall"]["at_10"]) == (2000, "Flat", 1.0)
    assert ivf["index"] == f"IVF{int(5 * 12000**0.5)},Flat" and ivf["recall"]["queries"] == 50
    assert 0 < ivf["recall"]["at_10"] <= 1 and ivf["synthetic_keys"] is True
    assert ivf["backend"] == ("torch" if no_faiss else "faiss-cpu")
    if no_faiss:  # torch's IVF: its fixed slot budget beside the candidates queries really had
        assert ivf["search_mode"] == "eager" and 0 < ivf["mean_candidates"] <= ivf["candidate_slots"]
    for row in (flat["search"], ivf["search"], ivf["exact_search"]):
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert data["peak_rss_mb"] > 0


def test_answer_times_has_one_row_per_answer(tmp_path):
    import csv

    import answer_times
    from typer.testing import CliRunner

    from specbench_cli.cli import app

    out = tmp_path / "run"
    questions = Path(__file__).parent / "fixtures" / "questions_small.jsonl"
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{questions}", "--methods", "ar,pld"]
    args += ["--max-new-tokens", "8", "--warmup", "0", "--limit", "2", "--repeats", "2", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    answer_times.main([str(out)])
    rows = list(csv.DictReader((out / "answer_times.csv").open()))
    answers = [
        json.loads(line) for f in (out / "answers").glob("*/*.jsonl") for line in f.read_text().splitlines()
    ]
    assert len(rows) == len(answers) == 8
    by_key = {(r["method"], r["question_id"], r["repeat"]): r for r in rows}
    for a in answers:
        row = by_key[a["method"], str(a["question_id"]), str(a["repeat"])]
        assert float(row["wall_time"]) == pytest.approx(sum(a["choices"][0]["wall_time"]), abs=1e-6)
        assert int(row["new_tokens"]) == sum(a["choices"][0]["new_tokens"]) and row["graph_captures"] == "0"


def test_keep_run_reports_and_copies_the_small_files_only(tmp_path):
    import keep_run
    from typer.testing import CliRunner

    from specbench_cli.cli import app

    out, dest = tmp_path / "run", tmp_path / "results" / "kept"
    questions = Path(__file__).parent / "fixtures" / "questions_small.jsonl"
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{questions}", "--methods", "ar,pld"]
    args += ["--max-new-tokens", "8", "--warmup", "0", "--limit", "2", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    for name in ("summary.json", "summary.md"):  # as a run cut short on the GPU machine: no report yet
        (out / name).unlink()
    keep_run.main([str(out), str(dest)])
    kept = {p.name for p in dest.iterdir()}
    assert {"config.json", "env.json", "summary.json", "summary.md", "answer_times.csv"} <= kept
    assert kept <= set(keep_run.KEPT) and not (dest / "answers").exists()
    summary = json.loads((dest / "summary.json").read_text())
    assert {"ar", "pld"} <= {row["method"] for row in summary["rows"]}


def test_retrieval_table_ratios_and_a_dropped_answer(tmp_path):
    import csv

    import retrieval_table

    run = tmp_path / "run"
    run.mkdir()
    cells = {
        "acceptance_rate": 0.1,
        "tokens_per_s": 1.0,
        "t_draft_ms": 0.1,
        "t_verify_ms": 2.0,
        "t_other_ms": 0.1,
    }
    rows = [
        {"suite": "s", "category": "overall", "method": m, "questions": 2, "mean_accepted_length": mat,
         "accepted_per_depth": apd, "speedup": sp, **cells}
        for m, mat, apd, sp in [("ar", 1.0, None, 1.0), ("rest", 2.0, 0.2, 1.5), ("dresd", 3.0, 0.3, 0.5)]
    ]  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"rows": rows}))
    times = [  # question 2 of dresd took 10 s (a compile on the clock): leave it out
        ("ar", "1", 100, 1.0), ("ar", "2", 100, 1.0), ("rest", "1", 100, 0.5), ("rest", "2", 100, 0.5),
        ("dresd", "1", 100, 0.4), ("dresd", "2", 100, 10.0),
    ]  # fmt: skip
    with (run / "answer_times.csv").open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["suite", "method", "question_id", "repeat", "new_tokens", "wall_time"]
        )
        writer.writeheader()
        writer.writerows(
            {"suite": "s", "method": m, "question_id": q, "repeat": 0, "new_tokens": n, "wall_time": w}
            for m, q, n, w in times
        )
    out = tmp_path / "table.md"
    result = retrieval_table.main([str(run), "--out", str(out), "--drop", "s/dresd/2"])
    (suite,) = result["suites"]
    assert suite["methods"]["dresd"]["speedup_dropped"] == pytest.approx((100 / 0.4) / (100 / 1.0))
    ratios = suite["dresd_over_rest"]
    assert ratios["accepted_per_depth"] == pytest.approx(1.5) and ratios[
        "mean_accepted_length"
    ] == pytest.approx(1.5)
    assert ratios["speedup"] == pytest.approx(2.5 / 1.5)
    assert (
        "without question 2" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == result
    )


def test_pld_lookup_times_every_length(tmp_path):
    import pld_lookup

    result = pld_lookup.main(["--out", str(tmp_path / "p.json"), "--lengths", "40,80", "--reps", "3"])
    assert [r["context_tokens"] for r in result["rows"]] == [40, 80]
    assert all(r[k] > 0 for r in result["rows"] for k in r if k.endswith("_us"))
    assert json.loads((tmp_path / "p.json").read_text()) == result


def test_profile_step_splits_each_methods_step(tmp_path):
    import profile_step

    out = tmp_path / "step.json"
    result = profile_step.main(
        [
            "--model",
            "tiny-random",
            "--device",
            "cpu",
            "--methods",
            "ar,pld",
            "--max-new-tokens",
            "12",
            "--out",
            str(out),
        ]
    )
    assert set(result["methods"]) == {"ar", "pld"} and result["engine"] == "eager"
    ar = result["methods"]["ar"]
    assert ar["steps"] == 11 and ar["buckets_used"] == {"1": 11} and ar["mean_draft_nodes"] == 0
    assert ar["t_verify_ms"] > 0 and ar["forward_ms_of_the_buckets_used"] > 0
    assert ar["host_ops_per_step"]["top"] and ar["kernels_per_step"] is None
    assert json.loads(out.read_text())["methods"]["pld"]["steps"] >= 1


def test_step_parts_on_a_tiny_shape(tmp_path):
    """The step-parts study runs the product's runner and verifier reads on CPU (no graphs, no fused move)."""
    import step_parts

    out = tmp_path / "parts.json"
    argv = ["--out", str(out), "--device", "cpu", "--shape", "tiny", "--dtype", "float32"]
    step_parts.main(argv + ["--sizes", "1,12", "--reps", "2", "--context", "32"])
    data = json.loads(out.read_text())
    one, twelve = data["rows"]
    assert (one["inputs"], twelve["inputs"]) == (1, 12) and "tree_and_commit_ms" not in one
    keys = (
        "forward_chain_ms",
        "forward_tree_ms",
        "tree_and_argmax_ms",
        "tree_and_top8_ms",
        "tree_and_commit_ms",
    )
    assert all(twelve[k] > 0 for k in keys)
    assert data["kv_compaction"] == "per layer" and data["graphs"] is False
    assert data["node_topk"] == "torch.topk (not on CUDA)" and twelve["top8_row_topk_ms"] > 0
    assert data["move"]["rows"] == 12 and data["move"]["per_layer_ms"] > 0 and "fused_ms" not in data["move"]


def test_recycle_parents_continue_the_template_as_a_chain():
    import step_parts

    from specbench_cli.drafters.recycle import PAPER_TEMPLATE, Template

    template = Template.from_paths(PAPER_TEMPLATE, 8).parents.tolist()
    assert step_parts.recycle_parents(5) == [-1] + [p + 1 for p in template[:5]]
    long = step_parts.recycle_parents(len(template) + 3)
    assert long[-3:] == [len(template), len(template) + 1, len(template) + 2]  # each below the one before


def test_session_script_functions_do_not_call_themselves():
    """A replace-all over a command once turned two of h200_session.sh's helpers into calls to
    themselves (endless recursion on the device, found only by reading): every helper's body must
    run something other than its own name."""
    import re

    script = (Path(__file__).resolve().parents[1] / "bench" / "h200_session.sh").read_text()
    bodies = re.findall(r"^(\w+)\(\) \{[^\n]*\n(.*?)^\}", script, flags=re.M | re.S)
    assert len(bodies) >= 6
    for name, body in bodies:
        calls = [line.split()[0] for line in body.splitlines() if line.strip()]
        assert name not in calls, f"{name} calls itself"


def test_drafter_replay_reproduces_the_runs_drafts_without_a_model(tmp_path):
    """Replaying ar's answers through pld gives exactly the steps and accepted tokens pld had in the
    run (float32 on CPU: pld's output is ar's), and every method's steps commit ar's whole output."""
    import drafter_replay
    from typer.testing import CliRunner

    from specbench_cli.cli import app

    out = tmp_path / "run"
    questions = Path(__file__).parent / "fixtures" / "questions_small.jsonl"
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{questions}", "--methods", "ar,pld"]
    args += ["--max-new-tokens", "24", "--warmup", "0", "--limit", "3", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    result_file = tmp_path / "replay.json"
    drafter_replay.main(
        ["--run", str(out), "--model", "tiny-random", "--suite", f"jsonl:{questions}", "--passes", "1"]
        + ["--methods", "pld,suffix,sam,recycle", "--option", "pld.max_ngram=2", "--out", str(result_file)]
    )
    result = json.loads(result_file.read_text())
    answers = {
        m: [
            json.loads(x)["choices"][0]
            for x in (out / "answers").glob(f"*/{m}.jsonl").__next__().read_text().splitlines()
        ]
        for m in ("ar", "pld")
    }
    outputs = sum(len(ids) for c in answers["ar"] for ids in c["output_ids"])
    assert result["turns"] == sum(len(c["output_ids"]) for c in answers["ar"])
    for method, row in result["methods"].items():
        # Each turn's first token comes from the prefill; the replayed steps commit the rest.
        assert row["steps"] * row["mean_committed"] == pytest.approx(outputs - result["turns"]), method
        assert row["propose_us"] > 0 and row["update_us"] >= 0
    assert result["methods"]["pld"]["options"] == {"max_ngram": "2"}
    # pld in the run, with its default options: replay it the same way and compare step by step.
    drafter_replay.main(
        ["--run", str(out), "--model", "tiny-random", "--suite", f"jsonl:{questions}", "--passes", "1"]
        + ["--methods", "pld", "--out", str(result_file)]
    )
    pld = json.loads(result_file.read_text())["methods"]["pld"]
    decoding = [n for c in answers["pld"] for n in c["accept_lengths"]]
    turns = sum(len(c["output_ids"]) for c in answers["pld"])
    assert [c["output_ids"] for c in answers["pld"]] == [c["output_ids"] for c in answers["ar"]]
    assert pld["steps"] == len(decoding) - turns  # the run's steps less one prefill per turn
    assert pld["mean_committed"] == pytest.approx((sum(decoding) - turns) / pld["steps"])
