"""Baselines: transformers' own greedy `generate`, run by `specbench eval --baselines` beside the methods.

    hf-eager   `model.generate` with its default dynamic cache and no compilation.
    hf-static  `model.generate` with a static cache, whose decode step transformers compiles itself on
               CUDA (its documented fast path; on the CPU it runs uncompiled).

They answer "how fast is this without specbench's engine at all?", so `ar`'s ratio to `hf-static` is
part of every GPU result. They never draft, so each generated token is one step (committed 1, no
draft), and they are not ranked as drafting methods by the report.

Usage: `Baseline("hf-static", loaded, static_len=4096).generate(prompt_ids, 256) -> Generation`, or
`hf_generate(loaded, prompt_ids, 256)` for one eager call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .types import Generation, LoadedModel, SpecbenchError, StepRecord

BASELINES = {
    "hf-eager": "transformers generate, greedy, dynamic cache, no compile",
    "hf-static": "transformers generate, greedy, one reused static cache (compiled by transformers on CUDA)",
}


def check_baselines(names: list[str]) -> None:
    for name in names:
        if name not in BASELINES:
            raise SpecbenchError(f"unknown baseline '{name}'; choose from: {', '.join(BASELINES)}")
    if len(set(names)) != len(names):
        raise SpecbenchError(f"--baselines lists a baseline twice: {','.join(names)}")


class _TokenClock:
    """A streamer that timestamps every generated token. transformers calls `put` once with the prompt,
    then once per step with the new token already copied to the host (`.cpu()`, a synchronisation that
    its stopping check makes anyway), so these stamps are device-synchronised step times."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: Any) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_generate(
    loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int, cache: Any = None
) -> Generation:
    """One greedy `model.generate` call, timed and counted like the engine's `generate`.

    `cache`: a transformers StaticCache to reuse (hf-static), or None for the dynamic cache with
    compilation disabled (hf-eager). The output stops after the first EOS, as the engine's does.
    """
    import torch

    model = loaded.model
    eos = loaded.eos_ids
    clock = _TokenClock()
    options: dict[str, Any] = dict(
        # Plain greedy, whatever the model's generation_config asks for (Qwen's sets sampling and a
        # repetition penalty): the same decoding rule as `ar`, so the outputs can be compared.
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        eos_token_id=eos or None,
        pad_token_id=eos[0] if eos else None,
        max_new_tokens=max_new_tokens,
        streamer=clock,
    )
    if cache is None:
        options["disable_compile"] = True
    else:
        options[_cache_kwarg(model)] = cache
    ids = torch.tensor([prompt_ids], device=model.device)
    with _no_cudnn_attention(model.device.type == "cuda" and cache is None), torch.inference_mode():
        if cache is not None:
            cache.reset()  # its tensors were made under inference mode: reset them there too
        _sync(model.device)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **options)
        _sync(model.device)
        wall = time.perf_counter() - start
    output = out[0, len(prompt_ids) :].tolist()
    stop_reason = "eos" if eos and output and output[-1] in eos else "length"
    # stamps[0] is the prompt's put (before the prefill); stamps[i] follows generated token i.
    stamps = [start] + clock.stamps[1 : len(output) + 1]
    if len(stamps) != len(output) + 1:  # a transformers without streamer calls: spread evenly
        stamps = [start + wall * i / max(len(output), 1) for i in range(len(output) + 1)]
    steps = [StepRecord(0, 0, 0, 1, t_verify=b - a) for a, b in zip(stamps, stamps[1:])]
    prefill = steps[0].t_verify if steps else wall
    return Generation(output, steps, wall, prefill, stop_reason)


@dataclass
class Baseline:
    """A named baseline holding what must live across calls: hf-static's one StaticCache.

    Why one reused cache of the run's length (not `cache_implementation="static"` per call): a cache
    sized per call grows with prompt + budget, and each new size or new cache object makes
    transformers' compiled step recompile; one cache reset between calls keeps a single compilation
    (measured with the old bench/gpu_bench.py on an H200). `specbench eval` warms a baseline up on two
    prompt lengths, so compilation and any recompilation for a new prompt length happen off the clock.
    """

    name: str
    loaded: LoadedModel
    static_len: int = 4096
    lossless = True  # transformers' greedy decoding is the target's own output
    cache: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        check_baselines([self.name])
        if self.name == "hf-static":
            from transformers import StaticCache

            self.cache = StaticCache(config=self.loaded.model.config, max_cache_len=self.static_len)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        if self.cache is None:
            return hf_generate(self.loaded, prompt_ids, max_new_tokens)
        room = self.static_len - len(prompt_ids)
        if room < 1:
            raise SpecbenchError(f"a prompt of {len(prompt_ids)} tokens does not fit hf-static's cache")
        gen = hf_generate(self.loaded, prompt_ids, min(max_new_tokens, room), self.cache)
        if room < max_new_tokens and gen.stop_reason == "length" and gen.new_tokens == room:
            gen.stop_reason = "cache"  # as the engine says when its preallocated cache is full
        return gen


def _cache_kwarg(model: Any) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes in 5.40).
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _no_cudnn_attention(active: bool):
    """cuDNN attention re-plans for every new KV length, milliseconds of CPU per layer in an eager
    decode on an H100; the dynamic-cache baseline would mostly measure that. Off for hf-eager
    only (a static cache has one KV length), without touching the global backend setting."""
    import contextlib

    if not active:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
