"""Shared fixtures: the tiny random Llama pair, built in code (no download, a fraction of a second)."""

from __future__ import annotations

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
