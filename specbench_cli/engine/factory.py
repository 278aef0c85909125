"""Where every model runner comes from: the engine builds its own and the drafters' with one factory.

A drafter that runs a model (sps, sps-tree, the hybrids on top of it) asks `MethodSetup.draft_runner()`
and gets the runner kind the run chose: eager, or compiled (static cache, CUDA graphs, torch.compile).
So a draft model is on the same execution path as the target it is timed against, and a benchmark never
has to reach into a drafter to swap its runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .runner import ModelRunner, Runner

RUNNER_KINDS = ("eager", "compiled")


@dataclass
class RunnerFactory:
    kind: str = "eager"  # eager | compiled
    max_len: int = 4096  # live slots of every runner it makes (the run's longest conversation)
    compile_mode: str | None = "default"  # compiled runners: torch.compile mode, None = graphs only
    draft_compile_mode: str | None = "default"  # the same for draft-model runners
    made: list[tuple[str, Runner]] = field(default_factory=list)  # (role, runner), for cost probes

    def make(self, model: Any, max_nodes: int, role: str = "draft") -> Runner:
        """A runner for `model` whose largest forward holds `max_nodes + 1` inputs.

        Methods that draft with the same model share its runner (and so its cache, CUDA graphs and
        compilation): methods take turns, and each resets the runner when its generation starts.
        """
        for made_role, runner in self.made:
            if made_role == role and runner.model is model and runner.max_nodes == max_nodes:
                return runner
        if self.kind == "compiled":
            from .compiled import CompiledRunner

            mode = self.compile_mode if role == "target" else self.draft_compile_mode
            # The target's logits stay in the model's dtype (the verifier casts what it computes with).
            runner: Runner = CompiledRunner(
                model, self.max_len, max_nodes, compile_mode=mode, float_logits=role != "target"
            )
        else:
            runner = ModelRunner(model, self.max_len)
        runner.max_nodes = max_nodes  # what the lookup above matches on
        self.made.append((role, runner))
        return runner
