"""`ar`: the autoregressive baseline. It drafts nothing, so every step commits one token."""

from __future__ import annotations

from ..types import DraftContext, DraftTree
from .base import Drafter


class Autoregressive(Drafter):
    name = "ar"

    def propose(self, ctx: DraftContext) -> DraftTree:
        return DraftTree.empty()
