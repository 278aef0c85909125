"""Forward costs measured inside a run: one target step, a verification of N inputs, one draft step.

Speculative decoding pays for a step with the draft's forwards plus one verification, and gets MAT
tokens for it. With c = t_draft(1) / t_target(1) and v(N) = t_target(N) / t_target(1), a method that runs
F draft forwards per step can at best reach MAT / (F * c + v(N)) times `ar`'s speed. `eval` measures
these costs on the run's own runners after warm-up (config.json `forward_costs`: `target`, `draft` for a
draft model, `head` for an EAGLE head) and the report prints the draft/target ratio and that prediction
beside the measured speedup, so what is left over is overhead.
"""

from __future__ import annotations

import statistics
import time

import torch

from .compiled import BUCKETS  # the sizes probed: the compiled runner's buckets below max_nodes + 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forwards(
    runner, sizes: list[int], context_ids: list[int], reps: int = 10, copy: bool = True
) -> dict[str, float]:
    """Median milliseconds of one `runner.forward` of each size (a chain of inputs after `context_ids`),
    wall time with the device synchronised: what a drafter or the decode loop pays for it. `copy` as
    the caller passes it: the decode loop verifies on the graph's own outputs (`copy=False`), drafters
    take copies.

    The sizes take turns, one forward of each per round: timed one size after another, a change of
    GPU clocks between sizes went into their ratios (an H200, 2026-12-03: t(64)/t(1) 1.25 and 1.13 in
    two runs minutes apart)."""
    runner.reset()
    runner.forward(list(context_ids), last_only=True)
    runner.commit(list(range(len(context_ids))))
    chains = {
        size: [context_ids[i % len(context_ids)] for i in range(size)]
        for size in sizes
        if runner.length + size <= runner.max_len
    }
    for tokens in chains.values():
        for _ in range(2):  # capture / compile / allocate outside the timing
            runner.forward(tokens, copy=copy)
    times: dict[int, list[float]] = {size: [] for size in chains}
    for _ in range(reps):
        for size, tokens in chains.items():
            _sync(runner.device)
            begin = time.perf_counter()
            runner.forward(tokens, copy=copy)
            _sync(runner.device)
            times[size].append(time.perf_counter() - begin)
    runner.reset()
    return {str(size): 1000.0 * statistics.median(t) for size, t in times.items()}


def probe_costs(engine, prompt_ids: list[int], context: int = 512, reps: int = 10) -> dict:
    """Forward costs of the target and of the first draft-model runner, at `context` committed tokens."""
    room = engine.max_len - engine.max_nodes - 2
    ids = [prompt_ids[i % len(prompt_ids)] for i in range(max(1, min(context, room)))]
    top = engine.max_nodes + 1
    target_sizes = sorted({s for s in BUCKETS if s < top} | {top})
    costs: dict = {
        "context": len(ids),
        "reps": reps,
        # As the decode loop verifies: on the graph's outputs, uncopied. With a copy, a forward of 129
        # inputs also cloned its (129, 152k) float32 logits, 78 MB that verification never moves, and the
        # ratio t(N)/t(1) grew with that copy's size (the H200's per-kernel profile, 2026-12-03: a 42.6 us
        # device-to-device copy at 129 inputs, bench/results/2026-12-03-h200-session11/profile_forward.json).
        "target": time_forwards(engine.runner, target_sizes, ids, reps, copy=False),
    }
    # Draft networks: the first draft model's runner ("draft") and the first EAGLE head's ("head"); the
    # report prices each method's draft forwards with the network it drafts with.
    from ..head.model import EagleHead

    for role, runner in engine.runners.made:
        key = "head" if isinstance(runner.model, EagleHead) else "draft"
        if role == "draft" and key not in costs:
            # Every bucket (an eager runner has none: the same sizes): a tree's levels take 16,
            # RASD's scoring forward up to 64; the report prices a forward at the next probed size.
            sizes = sorted({1, 16} | set(getattr(runner, "buckets", BUCKETS)))
            costs[key] = time_forwards(runner, sizes, ids, reps)
    return costs
