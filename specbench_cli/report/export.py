"""`specbench export RUN --format spec-bench --out DIR`: answer files that Spec-Bench's scripts read.

Usage: `export_spec_bench(Path("results/run1"), Path("export/run1"))`.

Spec-Bench's `evaluation/speed.py` and `equal.py` read one JSONL file per method, one line per
question: question_id, category, answer_id, model_id, tstamp and `choices[0]` with turns (the text),
decoding_steps, new_tokens and wall_time per turn and accept_lengths per step. We write exactly that,
plus `output_ids` inside the choice (ignored by its scripts; it keeps the export lossless for us).
Layout: DIR/<suite>/<method>.jsonl; a run with repeats gets one folder per repeat,
DIR/<suite>/run_<k>/<method>.jsonl (k from 1), the layout speed.py's get_mean_speedup averages over.
`ar` is Spec-Bench's baseline (its "vanilla" decoding); pass ar.jsonl as speed.py's --base-path.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..results import RunPaths, write_text_atomic
from ..types import SpecbenchError

FORMATS = ("spec-bench",)
CHOICE_FIELDS = (
    "index",
    "turns",
    "decoding_steps",
    "new_tokens",
    "wall_time",
    "accept_lengths",
    "output_ids",
)


def spec_bench_record(record: dict) -> dict:
    """One of our answer records in Spec-Bench's answer shape."""
    choice = record["choices"][0]
    return {
        "question_id": record["question_id"],
        "category": record.get("category", ""),
        "answer_id": record.get("answer_id", ""),
        "model_id": record.get("model_id", ""),
        "choices": [{key: choice[key] for key in CHOICE_FIELDS if key in choice} | {"index": 0}],
        "tstamp": record.get("tstamp", 0.0),
    }


def export_spec_bench(run_dir: Path, out: Path, fmt: str = "spec-bench") -> list[Path]:
    """Write the run's answers in Spec-Bench's format under `out`; return the files written.

    Refuses (nothing written) an unknown format, a folder that is not a run, or an `out` that
    already holds files.
    """
    from . import read_run_records

    if fmt not in FORMATS:
        raise SpecbenchError(f"unknown --format '{fmt}'; choose from: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecbenchError(f"--out {out} already exists and is not an empty folder; choose another")
    records, _ = read_run_records(RunPaths(Path(run_dir)))
    repeats = {int(r.get("repeat") or 0) for r in records}
    files: dict[Path, list[str]] = {}
    for r in records:
        folder = out / r["suite"]
        if len(repeats) > 1:
            folder = folder / f"run_{int(r.get('repeat') or 0) + 1}"
        files.setdefault(folder / f"{r['method']}.jsonl", []).append(json.dumps(spec_bench_record(r)))
    for path, lines in sorted(files.items()):
        write_text_atomic(path, "\n".join(lines) + "\n")
    return sorted(files)
