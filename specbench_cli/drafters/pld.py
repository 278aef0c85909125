"""`pld`: prompt lookup decoding, with Spec-Bench's defaults.

For n = 3 down to 1, the last n committed tokens (the root included) are searched for in the whole
context; the first occurrence (in text order) that has `num_pred` tokens after it, and is not the
suffix itself, gives those tokens as a chain draft. No match: an empty draft (a plain decoding step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..options import option
from ..types import DraftContext, DraftTree
from .base import Drafter


@dataclass
class PldOptions:
    max_ngram: int = option(3, "longest n-gram searched first (then n-1 ... 1)", "Spec-Bench PLD", minimum=1)
    num_pred: int = option(10, "tokens drafted after the match", "Spec-Bench PLD, num_pred_tokens", minimum=1)


def find_candidate(tokens: np.ndarray, max_ngram: int = 3, num_pred: int = 10) -> np.ndarray:
    """The draft for `tokens` (1-D int array); empty when nothing matches."""
    length = len(tokens)
    for n in range(min(max_ngram, length), 0, -1):
        # A usable match leaves num_pred tokens after it and its continuation starts before the
        # suffix itself (Spec-Bench: end <= length and start + n < length - n).
        last_start = min(length - n - num_pred, length - 2 * n - 1)
        if last_start < 0:
            continue
        windows = sliding_window_view(tokens[: last_start + n], n)
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if len(hits):
            start = int(hits[0]) + n
            return tokens[start : start + num_pred]
    return tokens[:0]


class PromptLookup(Drafter):
    name = "pld"
    options_class = PldOptions

    def propose(self, ctx: DraftContext) -> DraftTree:
        tokens = np.asarray(ctx.tokens, dtype=np.int64)
        draft = find_candidate(tokens, self.opts.max_ngram, self.opts.num_pred)
        return DraftTree.chain(draft[: ctx.max_nodes].tolist())
