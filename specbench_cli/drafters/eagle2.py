"""`eagle2`: EAGLE-2's dynamic draft tree drafted by an EAGLE head (Li et al., EMNLP 2024).

The head (`specbench train-head`, `head/model.py`) reads pairs (f_i, t_{i+1}): the target's final
hidden state at position i and the token after it, and predicts f_{i+1}, whose LM-head logits
draft the token after t_{i+1}. It keeps its own KV cache of one pair per committed position:

- catch-up: the pairs of the positions committed since the last step (the root and the accepted
  nodes, whose features the decode loop hands over in `ctx.features`) run through the head and are
  committed; the last one's output is the root's predicted feature and its logits are level 1;
- each further level (`dynamic_tree.grow_tree`, EAGLE-2's `topK_genrate`): the frontier nodes run
  as pairs (their parent's *predicted* feature, their token) on top of the committed pairs and their
  pending ancestors, all at the position after the parent's, as EAGLE does; nothing is committed, and
  the next catch-up overwrites those slots.
So after any partial acceptance the head's cache holds exactly the pairs of the committed tokens,
with the target's real features, as in EAGLE's `stable_kv`. Defaults are EAGLE-2's (top_k 10, depth
5 expansions = 6 levels, total_token 60 with the root = 59 draft nodes). The head runs through the
engine's runner factory, so under `--engine compiled` its levels replay CUDA graphs; on the CPU eager.
The verifier is the shared one: lossless at any temperature.

As a host tree for the hybrids (rasd, respec; `sps_tree.host_tree`) it offers sps-tree's public
calls: `grow(ctx)`, `root_logits(ctx, headroom)` and `score(tree, root_logprobs)`, and their queued
halves `launch(ctx)` and `score_later(tree, root_logprobs)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup
from .base import Drafter
from .dynamic_tree import LaunchedTree, ScoredTree, launch_tree, path_scores_later, picked
from .sps import common_prefix

if TYPE_CHECKING:  # torch is imported where it is used, so `ls --method eagle2` stays light
    from collections.abc import Callable

    import torch

HEAD_RUNNER_NODES = 63  # largest head forward on a graph: a tree level or a rasd scoring level (<= 64)


@dataclass
class Eagle2Options:
    top_k: int = option(10, "children per expanded node, and frontier width", "EAGLE-2 top_k", minimum=1)
    depth: int = option(
        6, "tree levels (the root's children are level 1)", "EAGLE-2 depth=5 expansions + 1", minimum=1
    )
    total_nodes: int = option(
        59, "draft nodes kept, best first", "EAGLE-2 total_token=60, root included", minimum=0
    )


_HEADS: dict[tuple, tuple] = {}  # (folder, manifest sha256, target) -> (head, manifest): one head per run


def shared_head(folder: Path, setup: MethodSetup):
    """The head in `folder` for this target, loaded once per process (eagle2 and the hybrids share it,
    and so share its runner and CUDA graphs)."""
    from ..head.model import MANIFEST_FILE, load_head

    path = Path(folder).resolve()
    manifest_file = path / MANIFEST_FILE
    digest = hashlib.sha256(manifest_file.read_bytes()).hexdigest() if manifest_file.is_file() else ""
    key = (str(path), digest, id(setup.target.model))
    if key not in _HEADS:
        _HEADS[key] = load_head(path, setup.target)
    return _HEADS[key]


class Eagle2(Drafter):
    name = "eagle2"
    needs_features = True
    needs_draft_head = True
    options_class = Eagle2Options

    def __init__(self, setup: MethodSetup, options: Eagle2Options | None = None):
        super().__init__(setup, options)
        self.head, self.manifest = shared_head(setup.draft_head, setup)
        self.runner = setup.runner_for(self.head, HEAD_RUNNER_NODES)
        self.rows = self.head.features_in.shape[0]
        self.seen: list[int] = []  # tokens whose pairs sit in the head cache (pairs: len(seen) - 1)
        self.root_feature: torch.Tensor | None = None  # predicted feature at the root's position

    def reset(self, prompt_ids: list[int]) -> None:
        self.runner.reset()
        self.seen, self.root_feature = [], None

    def _load_features(self, features: torch.Tensor) -> None:
        """Put `features` (n, H) into the buffer the head's next forward reads (a device copy)."""
        import torch

        with torch.inference_mode():
            self.head.features_in[: features.shape[0]].copy_(features)

    def _run(self, tokens: list[int], features: torch.Tensor, parents: list[int] | None = None, **kw):
        """One head forward: `features` (n, H) go into the buffer the head reads, then the runner runs."""
        self._load_features(features)
        return self.runner.forward(tokens, parents, want_hidden=True, **kw)

    def root_logits(self, ctx: DraftContext, headroom: int) -> torch.Tensor:
        """Commit the pairs of `ctx.tokens` (leaving `headroom` free slots); return the level-1 logits."""
        import torch

        tokens, features = ctx.tokens, ctx.features
        n = len(tokens)
        if features is None:  # no feature handed over: nothing to draft from
            self.root_feature = None
            return torch.zeros(self.head.config.vocab_size, device=self.runner.device)
        keep = max(0, min(common_prefix(self.seen, tokens) - 1, n - 2))  # always rerun the last pair
        if n - 1 + headroom > self.runner.max_len:
            self.runner.reset()
            self.runner.ensure_capacity(n + headroom + 64)
            keep = 0
        self.runner.rewind(keep)
        # Pieces that fit the feature buffer and, on a compiled runner, its largest graph (a longer
        # forward would run eagerly: the head cannot be split by the runner, it reads features by row).
        piece = min(self.rows, self.runner.max_graph_inputs() or self.rows)
        for start in range(keep, n - 1, piece):  # pair i = (f_i, t_{i+1}) at position i
            end = min(n - 1, start + piece)
            logits, hidden = self._run(tokens[start + 1 : end + 1], features[start:end], last_only=True)
            self.runner.commit(list(range(end - start)))
        self.seen = list(tokens)
        self.root_feature = hidden[-1]
        return logits[-1]

    def propose(self, ctx: DraftContext) -> DraftTree:
        return self.grow(ctx).tree

    def grow(self, ctx: DraftContext) -> ScoredTree:
        """The dynamic tree for `ctx`, best node first, with the head's scores of every node."""
        return self.launch(ctx).finish()

    def launch(self, ctx: DraftContext) -> LaunchedTree:
        """`grow`, queued: the catch-up and every level on the device, nothing read back yet."""
        import torch

        budget = min(self.opts.total_nodes, ctx.max_nodes)
        if budget <= 0 or ctx.features is None:
            return LaunchedTree(None, 0)
        k = min(self.opts.top_k, self.head.config.vocab_size)
        root_logp = torch.log_softmax(self.root_logits(ctx, (self.opts.depth - 1) * k + 1), dim=-1)
        outputs = [self.root_feature[None]]  # predicted features of the last expanded level

        def expand(
            tokens: torch.Tensor, slot_parents: torch.Tensor, rows: torch.Tensor | None
        ) -> torch.Tensor:
            # All on the device: the frontier's parent features are rows of the last level's output.
            source = outputs[0]
            self._load_features(
                source.expand(tokens.shape[0], -1) if rows is None else source.index_select(0, rows)
            )
            logits, hidden = self.runner.forward_tensors(tokens, slot_parents, want_hidden=True)
            outputs[0] = hidden
            return logits

        return launch_tree(root_logp, expand, k, self.opts.depth, budget)

    def score(self, tree: DraftTree, root_logprobs: torch.Tensor) -> list[float]:
        """Cumulative head log-probability of every node of `tree` below the current root (for RASD's
        pruning); call right after `grow` (or `launch`) or `root_logits` for the same context. One head
        forward per level of inner nodes, each fed its parent's predicted feature."""
        return self.score_later(tree, root_logprobs)()

    def score_later(self, tree: DraftTree, root_logprobs: torch.Tensor) -> Callable[[], list[float]]:
        """`score`, queued: the forwards and the reads go to the device now; the call reads them back."""
        import torch

        from ..engine.transfer import upload

        n = len(tree)
        if n == 0:
            return lambda: []
        dev = root_logprobs.device
        depths = tree.depths()
        has_child = {p for p in tree.parents if p >= 0}
        row_of: dict[int, tuple[int, int]] = {}  # inner node -> (level index, row in that level's logits)
        level_logp: list[torch.Tensor] = []  # per level of inner nodes: (m, V) log-probs of their children
        out: dict[int, torch.Tensor] = {}  # inner node -> its predicted feature
        slot_of: dict[int, int] = {}
        slot_parents: list[int] = []
        for d in range(1, max(depths) + 1):
            level = [v for v in range(n) if depths[v] == d and v in has_child]
            if not level or self.root_feature is None:
                break
            if self.runner.length + len(slot_parents) + len(level) > self.runner.max_len:
                break  # no room (rare): deeper nodes count as unlikely
            for v in level:
                slot_of[v] = len(slot_parents)
                p = tree.parents[v]
                slot_parents.append(slot_of[p] if p >= 0 else -1)
            self._load_features(
                torch.stack(
                    [self.root_feature if tree.parents[v] < 0 else out[tree.parents[v]] for v in level]
                )
            )
            # Tokens and parent slots go up through pinned memory as device inputs: the host-list
            # forward would first wait for its previous upload, queued behind the host's whole tree.
            logits, hidden = self.runner.forward_tensors(
                upload([tree.tokens[v] for v in level], dev), upload(slot_parents, dev), want_hidden=True
            )
            for i, v in enumerate(level):
                out[v], row_of[v] = hidden[i], (len(level_logp), i)
            level_logp.append(torch.log_softmax(logits, dim=-1))
        # Each node's own log-probability, read with one gather per level and one host copy.
        picks = [picked(root_logprobs, [t for t, p in zip(tree.tokens, tree.parents) if p < 0])]
        scored = [v for v in range(n) if tree.parents[v] < 0]
        for li, logp in enumerate(level_logp):
            kids = [
                v for v in range(n) if tree.parents[v] >= 0 and row_of.get(tree.parents[v], (-1,))[0] == li
            ]
            picks.append(
                picked(logp, [tree.tokens[v] for v in kids], [row_of[tree.parents[v]][1] for v in kids])
            )
            scored += kids
        return path_scores_later(tree, scored, torch.cat(picks))

    def describe(self) -> dict:
        return super().describe() | {
            "draft_head": str(self.setup.draft_head),
            "head_validation": self.manifest.get("validation"),
            "head_data_sha256": (self.manifest.get("data") or {}).get("sha256"),
        }
