"""`recycle`: Token Recycling (Luo et al., ACL 2025, arXiv 2408.08696) with the official code's defaults.

An adjacency matrix holds, for every token of the vocabulary, the k (8) tokens the target last ranked
most likely after it. After every verification step each input of the forward (the root and every
draft node, accepted or not) overwrites its row with the top-k of the target's logits there; those
come from the verifier's own forward (`needs_node_topk`), so there is no extra model call.

Each step a static tree template, the official code's default ("2.2.2": 80 nodes, depth 6), is filled
breadth-first from the matrix starting at the root: the template node [i1, ..., id] holds the id-th
successor of its parent's token, so [0] is the root's best successor and [0, 1] the second best
successor of that. Any prefix of the template is a tree, so a smaller node budget keeps its first nodes.

The matrix starts at zeros, as in the official code (an unseen token drafts token 0), and is kept across
the questions and turns of a run, as the official evaluation keeps one matrix for the whole run. `eval`
clears it before the first timed question (`start_run`), so the warm-up teaches it nothing and every
run starts from the same state; a resumed run starts from zeros at the point it resumes.

Statistics (per answer): how many matrix rows the answer wrote for the first time (summed over a run,
the matrix's fill), how many draft nodes hung below a row still at its zeros (blind guesses of token 0),
and how many steps started from a root whose row was already learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..jit import njit
from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup, StepFeedback
from .base import Drafter

# The official template "2.2.2" (model/recycling/tree_template_.py): each entry is a path of successor
# ranks from the root, listed breadth-first (every path after its parent path). 8 + 21 + 25 + 15 + 8 + 3.
PAPER_TEMPLATE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,), (4,), (5,), (6,), (7,),
    (0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (1, 0), (1, 1), (1, 2), (1, 3),
    (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (4, 0), (5, 0), (6, 0), (7, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 0, 4), (0, 0, 5), (0, 0, 6), (0, 0, 7), (0, 1, 0),
    (0, 1, 1), (0, 1, 2), (0, 2, 0), (0, 2, 1), (0, 3, 0), (0, 4, 0), (0, 5, 0), (0, 6, 0), (0, 7, 0),
    (1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (5, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 3), (0, 0, 0, 4), (0, 0, 1, 0), (0, 0, 1, 1),
    (0, 0, 2, 0), (0, 0, 3, 0), (0, 0, 4, 0), (0, 1, 0, 0), (0, 2, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0),
    (3, 0, 0, 0),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 2), (0, 0, 0, 1, 0), (0, 0, 0, 2, 0), (0, 0, 1, 0, 0),
    (0, 1, 0, 0, 0), (1, 0, 0, 0, 0),
    (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 0),
)  # fmt: skip


@dataclass
class RecycleOptions:
    k: int = option(
        8,
        "successors kept per token (the matrix's width); template paths using a rank >= k are dropped",
        "Token Recycling official code, --output-id-topk 8",
        minimum=1,
    )


@dataclass(frozen=True)
class Template:
    """A static tree as flat arrays: node i is successor number `ranks[i]` of node `parents[i]`'s token
    (-1: of the root); nodes of depth d are `levels[d - 1]` = (start, end), in breadth-first order."""

    parents: np.ndarray
    ranks: np.ndarray
    levels: tuple[tuple[int, int], ...]

    @classmethod
    def from_paths(cls, paths, k: int) -> Template:
        kept = [tuple(p) for p in paths if max(p) < k]  # a dropped path's descendants are dropped too
        index = {p: i for i, p in enumerate(kept)}
        depths = [len(p) for p in kept]
        if depths != sorted(depths) or any(len(p) > 1 and p[:-1] not in index for p in kept):
            raise ValueError("a tree template lists its paths breadth-first, each after its parent")
        parents = np.array([index[p[:-1]] if len(p) > 1 else -1 for p in kept], dtype=np.int64)
        ranks = np.array([p[-1] for p in kept], dtype=np.int64)
        levels = []
        for depth in sorted(set(depths)):
            levels.append((depths.index(depth), len(depths) - depths[::-1].index(depth)))
        return cls(parents, ranks, tuple(levels))

    def fill(self, matrix: np.ndarray, learned: np.ndarray, root: int, n: int) -> tuple[np.ndarray, int]:
        """The first n template nodes' tokens for this root, and how many hang below an unlearned row."""
        tokens = np.empty(n, dtype=np.int64)
        blind = _fill_template(matrix, learned, root, self.parents, self.ranks, tokens)
        return tokens, blind


# The two per-step loops run compiled (numba): as numpy calls, one per template level and several per
# call, they took ~75 us of a step's drafting on the host (2-core CPU, 2026-12-03) for 80 nodes.


@njit(cache=True, nogil=True)
def _fill_template(matrix, learned, root, parents, ranks, tokens):
    """tokens[i] = successor number ranks[i] of node parents[i]'s token (the root's when -1); parents
    precede children, so one pass in order fills the tree. Returns the nodes read from unlearned rows."""
    blind = 0
    for i in range(tokens.shape[0]):
        parent_token = root if parents[i] < 0 else tokens[parents[i]]
        tokens[i] = matrix[parent_token, ranks[i]]
        blind += not learned[parent_token]
    return blind


@njit(cache=True, nogil=True)
def _learn_rows(matrix, learned, inputs, topk):
    """Row inputs[i] of the matrix becomes topk[i], in input order, so a token forwarded twice keeps
    the top-k of its last (deepest) occurrence. Returns how many rows were written for the first time."""
    first_time = 0
    for i in range(inputs.shape[0]):
        token = inputs[i]
        for j in range(matrix.shape[1]):
            matrix[token, j] = topk[i, j]
        if not learned[token]:
            learned[token] = True
            first_time += 1
    return first_time


class TokenRecycling(Drafter):
    name = "recycle"
    options_class = RecycleOptions
    stat_names = {
        "rows_learned": "matrix rows written for the first time this run (summed over a run: the rows filled)",
        "blind_nodes": "draft nodes read from a row not learned yet (they draft token 0)",
        "known_root_steps": "steps whose root token already had a learned row",
    }

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        self.k = self.opts.k
        self.needs_node_topk = self.k
        self.template = Template.from_paths(PAPER_TEMPLATE, self.k)
        self.parents = tuple(self.template.parents.tolist())
        self.matrix = np.zeros((setup.target.vocab_size, self.k), dtype=np.int32)
        # Which rows hold a real top-k: a row of zeros is ambiguous (token 0 may be a real successor).
        self.learned = np.zeros(setup.target.vocab_size, dtype=bool)

    def start_run(self) -> None:
        self.matrix[:] = 0
        self.learned[:] = False

    def propose(self, ctx: DraftContext) -> DraftTree:
        n = min(len(self.parents), ctx.max_nodes)
        root = ctx.tokens[-1]
        tokens, blind = self.template.fill(self.matrix, self.learned, root, n)
        self.count("blind_nodes", blind)
        self.count("known_root_steps", int(self.learned[root]))
        return DraftTree(tuple(tokens.tolist()), self.parents[:n])

    def update(self, feedback: StepFeedback) -> None:
        if feedback.node_topk is None:
            return
        root = feedback.tokens[-len(feedback.committed) - 1]
        inputs = np.array([root, *feedback.tree.tokens], dtype=np.int64)
        topk = np.ascontiguousarray(feedback.node_topk[: len(inputs)], dtype=np.int64)
        self.count("rows_learned", int(_learn_rows(self.matrix, self.learned, inputs, topk)))

    def describe(self) -> dict:
        depth = len(self.template.levels)
        return {
            "k": self.k,
            "template": f"official 2.2.2 ({len(self.template.parents)} nodes, depth {depth})",
            "state": "matrix kept across the questions of a run, zeroed before the first timed question",
        }
