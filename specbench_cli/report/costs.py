"""What each method's speed should be, given what its steps cost: the draft/target cost ratio and the
speedup that the measured MAT predicts, beside the measured speedup.

`eval` measures forward costs on the run's own runners (config.json `forward_costs`, engine/costs.py):
t_T(N), the target's forward of N inputs, and t_D(N), the draft model's, at each graph bucket. Per
decode step a method runs draft forwards of n_1, ..., n_F inputs (recorded per step as
`draft_forward_inputs`: a tree's catch-up, its levels, RASD's scoring forward over the retrieved trie)
and one verification of its tree. So

    predicted step time = t_D(n_1) + ... + t_D(n_F) + t_T(nodes + 1)     (each at its bucket)
    predicted speedup   = MAT * t_T(1) / mean predicted step time

(Runs recorded before the sizes were: F * t_D(b), b = 1 for chains and 16 for trees.)

with MAT over decode steps (the prefill left out). The measured speedup falls short of the prediction
by the step's overhead: Python, retrieval, tree building, host syncs. `c = t_D(1) / t_T(1)`.

t_D is the network the method drafts with: the EAGLE head's costs (`forward_costs.head`) for a method
whose recorded parameters name a --draft-head (eagle2, rasd/respec hosted on the head, sam with the
eagle2 fallback), else the draft model's (`forward_costs.draft`).
"""

from __future__ import annotations

import math
from typing import Any

NAN = float("nan")


def _cost(table: dict[str, float], size: int) -> float:
    """Cost of a forward of `size` inputs: the smallest probed size that holds it (the runner's bucket)."""
    sizes = sorted(int(s) for s in table)
    fit = next((s for s in sizes if s >= size), sizes[-1] if sizes else None)
    return float(table[str(fit)]) if fit is not None else NAN


def drafts_with_head(params: Any) -> bool:
    """Whether a method's recorded parameters (config.json `methods_params`) name an EAGLE head,
    directly (eagle2) or through a host or fallback (rasd, respec, sam)."""
    if isinstance(params, dict):
        return bool(params.get("draft_head")) or any(drafts_with_head(v) for v in params.values())
    return False


def cost_rows(
    records: list[dict],
    forward_costs: dict | None,
    speedups: dict[str, float],
    head_methods: frozenset[str] | set[str] = frozenset(),
) -> list[dict]:
    """One row per method, pooled over every suite of the run; [] when the run has no cost probe.
    Methods in `head_methods` draft with the EAGLE head (priced by `forward_costs.head`)."""
    if not forward_costs or "target" not in forward_costs:
        return []
    target = forward_costs["target"]
    t1 = _cost(target, 1)
    by_method: dict[str, dict[str, Any]] = {}
    for record in records:
        choice = record["choices"][0]
        net = "head" if record["method"] in head_methods else "draft"
        draft = forward_costs.get(net)
        acc = by_method.setdefault(
            record["method"],
            {
                "net": net,
                "steps": 0,
                "committed": 0,
                "forwards": 0,
                "draft_ms": 0.0,
                "pred_draft": 0.0,
                "pred_verify": 0.0,
            },
        )
        nodes, depth = choice.get("draft_nodes") or [], choice.get("draft_depth") or []
        forwards = choice.get("draft_forwards") or [0] * len(nodes)
        inputs = choice.get("draft_forward_inputs")
        committed, t_draft = choice.get("accept_lengths") or [], choice.get("t_draft") or []
        # The first step of each turn is its prefill: not a decode step.
        first, prefill_steps = 0, set()
        for n in choice.get("decoding_steps") or []:
            prefill_steps.add(first)
            first += int(n)
        for i in range(len(nodes)):
            if i in prefill_steps:
                continue
            acc["steps"] += 1
            acc["committed"] += int(committed[i]) if i < len(committed) else 0
            acc["forwards"] += int(forwards[i])
            acc["draft_ms"] += 1000.0 * float(t_draft[i]) if i < len(t_draft) else 0.0
            if draft and inputs is not None:
                acc["pred_draft"] += sum(_cost(draft, int(n)) for n in inputs[i])
            elif draft:  # a run from before the sizes were recorded: chains at 1 input, trees at 16
                acc["pred_draft"] += int(forwards[i]) * _cost(draft, 1 if nodes[i] == depth[i] else 16)
            acc["pred_verify"] += _cost(target, int(nodes[i]) + 1)
    rows = []
    for method, acc in by_method.items():
        steps = acc["steps"]
        if not steps:
            continue
        mat = acc["committed"] / steps
        predicted_step = (acc["pred_draft"] + acc["pred_verify"]) / steps
        predicted = mat * t1 / predicted_step if predicted_step > 0 else NAN
        measured = speedups.get(method, NAN)
        draft = forward_costs.get(acc["net"])
        drafts = bool(acc["forwards"])
        rows.append(
            {
                "method": method,
                "draft_network": ("head" if acc["net"] == "head" else "draft model") if drafts else "",
                "decode_mat": mat,
                "draft_forwards_per_step": acc["forwards"] / steps,
                "c": _cost(draft, 1) / t1 if drafts and draft else NAN,
                "verify_cost": acc["pred_verify"] / steps / t1,  # v: verification / one target step
                "draft_ms_per_step": acc["draft_ms"] / steps,
                "predicted_draft_ms": acc["pred_draft"] / steps,
                "draft_time_ratio": (acc["draft_ms"] / acc["pred_draft"]) if acc["pred_draft"] else NAN,
                "predicted_speedup": predicted,
                "speedup": measured,
                "measured_over_predicted": measured / predicted
                if predicted and math.isfinite(predicted)
                else NAN,
            }
        )
    return rows
