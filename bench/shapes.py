"""Shared by the bench studies: random-weight models of the real shapes, the machine, JSON output.

Usage (from a study in this folder): `from shapes import SHAPES, random_model, device_info, write_json`.
Random weights of a real shape cost what the real model costs per forward, with no model files, so
kernel and runner studies run on a bare GPU machine; `tiny` runs the same code on a CPU in seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # specbench_cli, when run as a script

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2.5-Coder-1.5B-Instruct and SmolLM2-135M-Instruct, as their configs give them.
    "qwen2.5-coder-1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
    ),
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=1e5, rms_norm_eps=1e-5,
    ),
    "tiny": dict(  # a CPU smoke run of every study (and the tests)
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e4, rms_norm_eps=1e-5,
    ),
}  # fmt: skip


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def random_model(shape: str, dtype: Any, device: str) -> Any:
    """A seeded random-weight causal LM of `shape`, in eval mode, with no EOS (decodes the full budget)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape '{shape}'; choose from: {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    return model.eval().requires_grad_(False)


def random_loaded(shape: str, dtype: str, device: str) -> Any:
    """`random_model` wrapped as the product's LoadedModel (no tokenizer: random weights make no text)."""
    import types

    import torch

    from specbench_cli.types import LoadedModel

    model = random_model(shape, getattr(torch, dtype), device)
    no_tokenizer = types.SimpleNamespace(eos_token_id=None)
    return LoadedModel(model, no_tokenizer, shape, "random", None, dtype, device)


def device_info() -> dict[str, Any]:
    import platform

    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "device": props.name,
            "gpus": torch.cuda.device_count(),
            "memory_gb": props.total_memory / 2**30,
        }
    return info


def write_json(path: Path, data: dict) -> None:
    """Atomic: a study cut off by a timeout leaves the previous complete file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(runner: Any, size: int, context: int, reps: int, device: str) -> float:
    """Median ms of one `runner.forward` over `size` inputs (a chain) after `context` committed slots:
    CUDA events on a GPU (device time of the queued work), perf_counter on the CPU. Nothing is
    committed, so every repetition writes the same slots. Uncopied outputs (`copy=False`), as the
    decode loop verifies: a copy of 129 rows of float32 logits is 78 MB the verification never moves."""
    import time

    import torch

    runner.reset()
    runner.length = context
    tokens, parents = list(range(size)), [-1] + list(range(size - 1))
    runner.forward(tokens, parents, copy=False)  # first call: lazy buffers, capture, compilation
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            runner.forward(tokens, parents, copy=False)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            runner.forward(tokens, parents, copy=False)
            times.append(1000 * (time.perf_counter() - start))
    runner.reset()
    return round(sorted(times)[len(times) // 2], 4)


def make_runner(loaded: Any, variant: str, max_len: int) -> Any:
    from specbench_cli.engine.compiled import CompiledRunner
    from specbench_cli.engine.runner import ModelRunner

    if variant == "eager":
        return ModelRunner(loaded.model, max_len)
    # ATTENTION:BACKEND:MODE[:nofuse], e.g. tree:efficient:default or tree:efficient:default:nofuse.
    # A target's runner, as the engine's factory makes it: logits in the model's dtype.
    attention, backend, mode, *flags = variant.split(":")
    runner = CompiledRunner(
        loaded.model, max_len, 128, attention=attention, backend=backend,
        compile_mode=None if mode == "eager" else mode, fuse="nofuse" not in flags, float_logits=False,
    )  # fmt: skip
    return runner
