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
    flat, ivf = data["search"]["sizes"]
    assert (flat["keys"], flat["index"], flat["recall"]["at_10"]) == (2000, "Flat", 1.0)
    assert ivf["index"] == f"IVF{int(5 * 12000**0.5)},Flat" and ivf["recall"]["queries"] == 50
    assert 0 < ivf["recall"]["at_10"] <= 1 and ivf["synthetic_keys"] is True
    assert ivf["backend"] == ("torch" if no_faiss else "faiss-cpu")
    for row in (flat["search"], ivf["search"], ivf["exact_search"]):
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert data["peak_rss_mb"] > 0
