"""Shared fixtures: the tiny random Llama pair, built in code (no download, a fraction of a second), and
the data root the suite tests read (the shared data where it exists, else stand-ins in the same formats)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# The tiny models are far below OpenMP's break-even: with 2 threads, each small attention call
# pays a thread barrier (milliseconds on a busy 2-core CI box, against microseconds on one thread).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    from specbench_cli.models import load_model

    return load_model("tiny-random", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_draft():
    from specbench_cli.models import load_model

    return load_model("tiny-random-draft", dtype="float32", device="cpu")


# ---------------------------------------------------------------------------------------------------
# The data root: the project's shared data where the clone sits beside it, else small stand-ins

REPO = Path(__file__).resolve().parents[1]
SPEC_BENCH_RELATIVE = Path("spec_bench") / "question.jsonl"
CODE_ALPACA_RELATIVE = Path("code_alpaca") / "code_alpaca_2k.json"
# Spec-Bench's five single-turn tasks; its MT-Bench part uses suites.MT_BENCH_CATEGORIES.
SINGLE_TURN_CATEGORIES = ("translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass(frozen=True)
class DataRoot:
    """A folder laid out like ../shared/data. `real` says it holds the pinned files themselves, so the
    tests that check the published counts and sha256s run on them; stand-ins only keep the formats."""

    path: Path
    real: bool

    @property
    def spec_bench(self) -> Path:
        return self.path / SPEC_BENCH_RELATIVE

    @property
    def code_alpaca(self) -> Path:
        return self.path / CODE_ALPACA_RELATIVE

    def pin(self, monkeypatch) -> None:
        """Make the loaders' pinned sha256s those of these files (a no-op for the real ones)."""
        from specbench_cli import suite_files
        from specbench_cli.files import sha256_file

        if not self.real:
            monkeypatch.setattr(suite_files, "SPEC_BENCH_SHA256", sha256_file(self.spec_bench))
            monkeypatch.setattr(suite_files, "CODE_ALPACA_SHA256", sha256_file(self.code_alpaca))


def _real_data_root() -> Path | None:
    # The same places the loader looks (suite_files._data_roots), seen from the repository root.
    candidates = [os.environ.get("SPECBENCH_DATA"), REPO.parent / "shared" / "data"]
    for root in (Path(c).expanduser() for c in candidates if c):
        if (root / SPEC_BENCH_RELATIVE).is_file() and (root / CODE_ALPACA_RELATIVE).is_file():
            return root
    return None


# A summarisation prompt a small model answers by copying names and phrases from the article.
ARTICLE = (
    "The town council of Millbrook voted on Tuesday to rebuild the old stone bridge over the Alder River. "
    "The bridge, built in 1887, was closed last spring after engineers from the county found cracks in two "
    "of its arches. Mayor Helen Ortiz said the repairs will cost 4.2 million dollars and take eighteen months. "
    "Local shop owners on Mill Street said the closure had cut their sales by a third, because drivers from "
    "the east side now take the highway instead of crossing into the town centre. The council will ask the "
    "state for half of the money and pay the rest from a bond approved by voters in 2021."
)


def write_stand_in_data(root: Path) -> None:
    """Small files in the real formats: Spec-Bench's 13 categories (MT-Bench's eight with two turns,
    five single-turn tasks, references as the real file has them: one string per turn, or for RAG a list
    of acceptable answers per turn), and CodeAlpaca's instruction/input/output
    rows, more of them than the default subset."""
    from specbench_cli.suites import MT_BENCH_CATEGORIES

    rows, qid = [], 1
    for category in MT_BENCH_CATEGORIES:
        for i in range(2):
            rows.append(
                {"question_id": qid, "category": category, "turns": [f"{category} task {i}?", "Now shorter."]}
            )
            qid += 1
    for category in SINGLE_TURN_CATEGORIES:
        for i in range(8):
            turn = (
                f"Summarize the following article in two sentences.\n\n{ARTICLE}"
                if category == "summarization"
                else f"{category} question {i}?"
            )
            row = {"question_id": qid, "category": category, "turns": [turn]}
            if category == "rag":  # per turn, a list of acceptable answers
                row["reference"] = [[f"answer {i}", f"another answer {i}"]]
            elif category != "qa":  # per turn, one reference answer
                row["reference"] = [f"reference answer {i}"]
            rows.append(row)
            qid += 1
    (root / SPEC_BENCH_RELATIVE).parent.mkdir(parents=True)
    (root / SPEC_BENCH_RELATIVE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    alpaca = [
        {
            "instruction": f"Write a function that returns {i} plus x.",
            "input": "" if i % 3 else f"x = {i}",
            "output": f"def f(x):\n    return {i} + x",
        }
        for i in range(150)
    ]
    (root / CODE_ALPACA_RELATIVE).parent.mkdir(parents=True)
    (root / CODE_ALPACA_RELATIVE).write_text(json.dumps(alpaca, indent=1))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> DataRoot:
    real = _real_data_root()
    if real is not None:
        return DataRoot(real, real=True)
    root = tmp_path_factory.mktemp("data-root") / "shared" / "data"
    write_stand_in_data(root)
    return DataRoot(root, real=False)
