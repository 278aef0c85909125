"""`pld`: prompt lookup decoding, with Spec-Bench's defaults.

For n = 3 down to 1, the last n committed tokens (the root included) are searched for in the whole
context; the first occurrence (in text order) that has `num_pred` tokens after it, and is not the
suffix itself, gives those tokens as a chain draft. No match: an empty draft (a plain decoding step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..options import option
from ..types import DraftContext, DraftTree
from .base import Drafter


@dataclass
class PldOptions:
    max_ngram: int = option(3, "longest n-gram searched first (then n-1 ... 1)", "Spec-Bench PLD", minimum=1)
    num_pred: int = option(10, "tokens drafted after the match", "Spec-Bench PLD, num_pred_tokens", minimum=1)


def find_candidate(tokens: np.ndarray, max_ngram: int = 3, num_pred: int = 10) -> np.ndarray:
    """The draft for `tokens` (1-D int array); empty when nothing matches.

    Every n-gram suffix ends with the same tokens, so each context position is compared with each of
    the last `max_ngram` tokens once: an n-gram starting at s matches when position s + j equals the
    suffix's token j, for j < n. That is max_ngram comparisons in all instead of a window array per n
    (the per-step drafting time is on the clock: 0.24 ms a step on the H200 host before this).
    """
    length = len(tokens)
    top = min(max_ngram, length)
    # equal[k][i]: tokens[i] == tokens[length - 1 - k], the k-th token from the end.
    equal = [tokens == tokens[length - 1 - k] for k in range(top)]
    for n in range(top, 0, -1):
        # A usable match leaves num_pred tokens after it and its continuation starts before the
        # suffix itself (Spec-Bench: end <= length and start + n < length - n).
        last_start = min(length - n - num_pred, length - 2 * n - 1)
        if last_start < 0:
            continue
        hit = equal[n - 1][: last_start + 1].copy()  # position s holds the suffix's first token
        for j in range(1, n):
            hit &= equal[n - 1 - j][j : j + last_start + 1]
        first = int(hit.argmax())
        if hit[first]:
            start = first + n
            return tokens[start : start + num_pred]
    return tokens[:0]


class PromptLookup(Drafter):
    name = "pld"
    options_class = PldOptions

    def propose(self, ctx: DraftContext) -> DraftTree:
        draft = find_candidate(ctx.array(), self.opts.max_ngram, self.opts.num_pred)
        return DraftTree.chain(draft[: ctx.max_nodes].tolist())
