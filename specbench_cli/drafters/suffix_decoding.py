"""`suffix`: SuffixDecoding (Oliaro et al., NeurIPS 2025) with vLLM's defaults (`method: "suffix"`).

Two suffix trees, each holding every substring of up to `max_tree_depth` (24) tokens of its texts with
the number of times it occurs:
- a per-request tree over the prompt and everything generated so far (the root included);
- a cross-request tree over finished answers: `eval` adds each turn's output once its question's answer
  is written (`finish_answer`), in run order, and never an unfinished answer; it keeps the latest
  `max_cached_requests` (10,000) answers, evicting the oldest first. Drafts, hence speed (never the
  tokens: verification is exact), depend on the order of the questions; `eval` keeps that order fixed.

Each step, in each tree, for every match length m = 1, 2, ... (the last m committed tokens, while they
occur in the tree and m is below the context length) a draft grows from the matched node: a token's
estimated probability is the product of count(child) / count(parent) along its path, and the draft
takes the most probable candidate next (a priority queue) until it holds `max_spec_factor * m +
max_spec_offset` tokens (at most `max_spec_tokens`, 24) or no candidate reaches `min_token_prob` (0.1).
Its score is the sum of its probabilities (the expected number of accepted tokens); the best score over
m wins (the longer match on ties), then the better of the two trees (the per-request one on ties). With
`tree=false` the draft is a single path (the most frequent child each time), as vLLM speculates.

The trees are depth-capped suffix tries whose strings seen once are no nodes: such a string stands for
its one occurrence in the stored text, and its extensions are that occurrence's continuation
(arctic-inference's `SuffixTree` compresses those paths too, which saves memory and time, not drafts).
Appending a token costs a dictionary step for each open suffix seen before, not one per suffix.

Statistics (per answer): steps with a draft, and of those the ones the cross-request tree won; the
chosen draft's match length and its score (the tree's own estimate of accepted tokens, to set beside
the measured acceptance); the nodes the per-request trees grew to over the answer's turns.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import asdict, dataclass, field

from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup
from .base import Drafter


@dataclass
class SuffixOptions:
    max_tree_depth: int = option(
        24,
        "longest substring the trees hold (match + draft)",
        "vLLM suffix_decoding_max_tree_depth",
        minimum=1,
    )
    max_cached_requests: int = option(
        10000,
        "finished answers the cross-request tree keeps, oldest evicted first; 0 disables it",
        "vLLM suffix_decoding_max_cached_requests",
        minimum=0,
    )
    max_spec_factor: float = option(
        1.0,
        "a match of m tokens drafts at most factor * m + offset tokens",
        "vLLM suffix_decoding_max_spec_factor",
        minimum=0,
    )
    max_spec_offset: float = option(
        0.0, "added to factor * m (may be negative)", "arctic-inference SuffixDecodingCache.speculate default"
    )
    min_token_prob: float = option(
        0.1,
        "draft no token whose estimated probability is below this",
        "vLLM suffix_decoding_min_token_prob",
        minimum=0,
    )
    max_spec_tokens: int | None = option(
        None,
        "draft tokens per step at most; none = max_tree_depth",
        "vLLM: num_speculative_tokens defaults to the depth",
        minimum=1,
    )
    tree: bool = option(
        True,
        "grow a speculation tree (the paper); false: a single path (vLLM's use_tree_spec=False)",
        "SuffixDecoding paper; arctic-inference speculate(use_tree_spec)",
    )


@dataclass
class Draft:
    """A speculation: tokens with parents (-1 = the root), estimated probabilities and their sum."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    match_len: int = 0

    @property
    def score(self) -> float:
        return sum(self.probs)


# The children of every explicit leaf, one shared empty dict that is never written: a node gets its own
# dict when it gets a child.
LEAF: dict[int, int] = {}
SEP = -1  # ends each closed text in `SuffixTrie.text`: no string continues past it


class SuffixTrie:
    """Every substring of at most `max_depth` tokens of the stored texts, with its occurrence count.

    A string seen twice or more is a node: node 0 is the root (its count is the number of stored
    tokens), `kids[n]` maps a token to the child, `count[n]` is how often the node's string occurs. A
    string seen once is no node of its own: its child entry is `~q` (negative), q the position in `text`
    (every stored token, each closed text followed by SEP) where its one occurrence ends, and all its
    extensions are that occurrence's continuation, with count 1. A text seen once (most of them) thus
    costs no node per token and depth, and a draft of it is a slice of `text` (arctic-inference's
    `SuffixTree` compresses such paths the same way).

    One text grows at a time (`extend`); `close()` ends it. `remove` takes a closed text's counts out.
    """

    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.kids: list[dict[int, int]] = [{}]
        self.count: list[int] = [0]
        self.text: list[int] = []
        # The current text's suffixes seen before (nodes, not `~q`), the shortest first: active[m - 1] is
        # the node of its last m tokens. The longer ones, up to `open` tokens, are seen only here.
        self.active: list[int] = []
        self.open = 0  # the current text's suffixes of at most max_depth tokens
        self.strings = 0  # substrings ever stored (a plain trie's nodes; `remove` leaves it)
        # node -> its children ranked, valid until the counts change: the cross-request tree changes only
        # when an answer is added, so a common token's thousands of children are sorted once per answer.
        self.ranked: dict[int, list[tuple[int, int]]] = {}

    def extend(self, tokens) -> None:
        self.ranked.clear()
        kids, count, depth, text = self.kids, self.count, self.max_depth, self.text
        active = self.active
        for tok in tokens:
            tok = int(tok)
            end = len(text)
            text.append(tok)
            # The empty suffix and the open ones seen before, shortest first, each grow by `tok`. Once
            # one has no `tok` child, no longer one has (had the longer string + tok occurred, so would
            # its suffix + tok): from there on each gets the new string `~end`. The open suffixes seen
            # only here need nothing: their extensions are this occurrence's continuation already.
            grown = []
            for node in [0, *active[: depth - 1]]:
                children = kids[node]
                child = children.get(tok)
                if child is None:
                    if children is LEAF:
                        kids[node] = {tok: ~end}
                    else:
                        children[tok] = ~end
                    continue
                if child >= 0:
                    count[child] += 1
                else:  # seen once before, ending at q: now twice, a node of its own
                    q = ~child + 1
                    after = text[q]  # what followed that occurrence (q <= end)
                    child = len(kids)
                    kids.append({after: ~q} if len(grown) + 1 < depth and after != SEP else LEAF)
                    count.append(2)
                    children[tok] = child
                grown.append(child)
            self.strings += min(self.open, depth - 1) + 1 - len(grown)
            self.open = min(self.open + 1, depth)
            count[0] += 1
            active = grown
        self.active = active

    def close(self) -> None:
        self.text.append(SEP)
        self.active, self.open = [], 0

    def open_matches(self) -> list[int]:
        """`matches` of the current text itself: the suffixes seen before, then those seen only here."""
        return self.active + [~(len(self.text) - 1)] * (self.open - len(self.active))

    def remove(self, tokens: list[int]) -> None:
        """Forget a text added earlier with `extend` + `close` (strings left at count 0 are unlinked)."""
        self.ranked.clear()
        for start in range(len(tokens)):
            node = 0
            for tok in tokens[start : start + self.max_depth]:
                child = self.kids[node][tok]
                if child < 0:  # seen once, here: the string and its extensions go
                    del self.kids[node][tok]
                    break
                self.count[child] -= 1
                if self.count[child] == 0:
                    del self.kids[node][tok]  # its whole subtree is at 0 too: unreachable from now on
                node = child
        self.count[0] -= len(tokens)

    def child(self, node: int, depth: int, tok: int) -> int | None:
        """The child by `tok` of `node`, whose string has `depth` tokens (None: never seen)."""
        if node >= 0:
            return self.kids[node].get(tok)
        q = ~node + 1
        if depth < self.max_depth and q < len(self.text) and self.text[q] == tok:
            return ~q
        return None

    def children(self, node: int, depth: int) -> list[tuple[int, int]]:
        """(token, child) pairs, most frequent first (the smaller token on equal counts)."""
        if node < 0:
            q = ~node + 1
            after = self.text[q] if q < len(self.text) and depth < self.max_depth else SEP
            return [] if after == SEP else [(after, ~q)]
        ranked = self.ranked.get(node)
        if ranked is None:
            count = self.count
            ranked = sorted(
                self.kids[node].items(), key=lambda kv: (-count[kv[1]] if kv[1] >= 0 else -1, kv[0])
            )
            self.ranked[node] = ranked
        return ranked

    def grow(self, node: int, depth: int, max_tokens: int, min_prob: float, tree: bool) -> Draft:
        """The draft below `node` (a string of `depth` tokens): the most probable candidate next, until
        full or none reaches min_prob.

        Written for speed (it runs once per match length per step, in Python, on the clock): the
        children offered are walked in rank order and the walk stops at the first one below min_prob,
        so at most 1 / min_prob of a node's children are ever read."""
        draft = Draft()
        tokens, parents, probs = draft.tokens, draft.parents, draft.probs
        count, kids, text, children_of = self.count, self.kids, self.text, self.children
        push, pop = heapq.heappush, heapq.heappop
        heap: list[tuple[float, int, int, int, int, int]] = []  # (-prob, order, token, child, parent, depth)
        order = 0  # equal probabilities: the candidate offered first goes first
        parent_node, parent_index, prob = node, -1, 1.0
        while True:
            if not heap and parent_node < 0:
                # A string seen once, and no other candidate: the rest of the draft is its occurrence's
                # continuation, every token as probable as the last (a count of 1 under 1).
                q = ~parent_node + 1
                n = min(max_tokens - len(tokens), self.max_depth - depth, len(text) - q)
                chain = text[q : q + n] if prob >= min_prob else []
                if SEP in chain:
                    chain = chain[: chain.index(SEP)]
                tokens += chain
                parents += range(parent_index, parent_index + len(chain))
                probs += [prob] * len(chain)
                return draft
            total, children = (1, LEAF) if parent_node < 0 else (count[parent_node], kids[parent_node])
            if not heap and len(children) == 1:
                # The only candidate (a string seen twice is often a chain of these): it goes next if it
                # is probable enough, without the push and pop the heap would spend on it.
                ((tok, parent_node),) = children.items()
                p = prob * (count[parent_node] if parent_node >= 0 else 1) / total
                if p < min_prob or len(tokens) >= max_tokens:
                    return draft
                depth += 1
            else:
                # Most frequent first (the rest are less probable); a node with one child needs no
                # ranking (the replay of fast-repeats-8: 0.6 children per ranking).
                offered = children.items() if len(children) == 1 else children_of(parent_node, depth)
                for tok, child in offered:
                    p = prob * (count[child] if child >= 0 else 1) / total
                    if p < min_prob:
                        break
                    push(heap, (-p, order, tok, child, parent_index, depth + 1))
                    order += 1
                    if not tree:  # a single path: the most frequent child only
                        break
                if not heap or len(tokens) >= max_tokens:
                    return draft
                neg_p, _, tok, parent_node, parent_index, depth = pop(heap)
                p = -neg_p
            tokens.append(tok)
            parents.append(parent_index)
            probs.append(p)
            parent_index, prob = len(tokens) - 1, p

    def matches(self, context) -> list[int]:
        """nodes[m - 1]: the node of `context`'s last m tokens, for every m below its length that occurs."""
        nodes = []
        for m in range(1, len(context)):
            node = 0
            for depth, tok in enumerate(context[-m:]):
                node = self.child(node, depth, tok)
                if node is None:
                    return nodes
            nodes.append(node)
        return nodes

    def follow(self, nodes: list[int], tok: int) -> list[int]:
        """`matches` of a context one token longer, from the shorter context's (depth steps, not
        depth^2 / 2): the last m tokens now end in `tok`, so each node is a child of the last m - 1's."""
        kids, text = self.kids, self.text
        first = kids[0].get(tok)
        if first is None:
            return []
        grown = [first]
        for node in nodes[: self.max_depth - 2]:  # strings shorter than max_depth - 1: no cap to check
            if node >= 0:
                child = kids[node].get(tok)
                if child is None:
                    break
            else:
                q = ~node + 1
                if q >= len(text) or text[q] != tok:
                    break
                child = ~q
            grown.append(child)
        return grown

    def speculate(
        self,
        context: list[int],
        opts: SuffixOptions,
        max_spec_tokens: int,
        nodes: list[int] | None = None,
        to_beat: float = 0.0,
    ) -> Draft:
        """The best-scoring draft over every match length of `context`'s suffix (the longer on ties).
        `nodes`: the context's `matches` when the caller keeps them. `to_beat`: only a draft scoring
        more than this is wanted (the other tree's best); below it the empty draft comes back, and
        match lengths whose token cap cannot beat it are never grown."""
        if nodes is None:
            nodes = self.matches(context)
        nodes = nodes[: len(context) - 1]
        # Longest match first, so a shorter one must score strictly better. A draft scores at most its
        # token cap (every probability is at most 1) and the cap shrinks with m: once the cap cannot
        # beat the best score, no shorter match can.
        # Until a draft scores, the answer is the empty draft of the longest match.
        best, best_score = Draft(match_len=len(nodes)), to_beat
        factor, offset, min_prob, tree = (
            opts.max_spec_factor,
            opts.max_spec_offset,
            opts.min_token_prob,
            opts.tree,
        )
        # Matches that something ever followed come first: had a longer match been followed by a
        # token, so would every shorter one. The longer ones (most, in a text's own tree) draft
        # nothing, so the walk starts at the longest followed match, found by bisection.
        kids, text, depth = self.kids, self.text, self.max_depth

        def drafts_nothing(m: int) -> bool:  # the match of m tokens has no child
            node = nodes[m - 1]
            if node >= 0:
                return not kids[node]
            q = ~node + 1
            return m >= depth or q >= len(text) or text[q] == SEP

        followed = bisect.bisect_left(range(1, len(nodes) + 1), True, key=drafts_nothing)
        for m in range(followed, 0, -1):
            cap = min(max_spec_tokens, max(0, int(m * factor + offset + 1e-6)))
            if cap <= best_score:
                break
            draft = self.grow(nodes[m - 1], m, cap, min_prob, tree)
            score = draft.score
            if score > best_score:
                draft.match_len = m
                best, best_score = draft, score
        return best


class SuffixDecoding(Drafter):
    name = "suffix"
    options_class = SuffixOptions
    stat_names = {
        "drafted_steps": "steps with a non-empty draft",
        "shared_steps": "steps drafted from the cross-request tree (earlier answers)",
        "match_len": "matched suffix length of the drafts, summed (divide by drafted steps for the mean)",
        "draft_score": "the drafts' estimated accepted tokens (sum of their probabilities), summed",
        "request_tree_nodes": "nodes of the per-request trees (prompt and answer so far), summed over turns",
    }

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        self.depth = self.opts.max_tree_depth
        self.max_spec = self.opts.max_spec_tokens or self.depth
        self.answers: deque[list[int]] = deque()  # finished answers in the cross-request tree, oldest first
        self.shared = SuffixTrie(self.depth)
        self.local = SuffixTrie(self.depth)
        self.fed = 0  # committed tokens already in the per-request tree
        self.last: Draft | None = None  # the latest speculation (tests, debugging)
        self.shared_matches: list[int] | None = None  # the cross-request tree's matches of the text
        self.last_source = ""

    def start_run(self) -> None:
        self.answers: deque[list[int]] = deque()
        self.shared = SuffixTrie(self.depth)
        self.shared_matches = None

    def finish_answer(self, output_ids: list[int]) -> None:
        if self.opts.max_cached_requests == 0 or not output_ids:
            return
        answer = [int(t) for t in output_ids]
        self.shared_matches = None
        self.shared.extend(answer)
        self.shared.close()
        self.answers.append(answer)
        while len(self.answers) > self.opts.max_cached_requests:
            self.shared.remove(self.answers.popleft())

    def reset(self, prompt_ids: list[int]) -> None:
        self.local = SuffixTrie(self.depth)
        self.local.extend(prompt_ids)
        self.fed = len(prompt_ids)
        self.shared_matches = None
        self.count("request_tree_nodes", self.local.strings)  # the root is no substring

    def propose(self, ctx: DraftContext) -> DraftTree:
        grown_from = self.local.strings
        new_tokens = ctx.tokens[self.fed :]  # the engine only appends: the new committed tokens
        self.local.extend(new_tokens)
        self.fed = len(ctx.tokens)
        self.count("request_tree_nodes", self.local.strings - grown_from)
        context = ctx.tokens[-self.depth :]
        limit = min(self.max_spec, ctx.max_nodes)
        # The request tree holds this very text: its open suffixes are the matches, shortest first.
        mine = self.local.speculate(context, self.opts, limit, self.local.open_matches())
        if self.shared_matches is None:  # a new turn or a changed tree: matched from the root once
            self.shared_matches = self.shared.matches(context)
        else:
            for tok in new_tokens:
                self.shared_matches = self.shared.follow(self.shared_matches, int(tok))
        # The request tree wins ties, so the cross-request one only matters where it scores more: the
        # match lengths that cannot are skipped (the same choice, fewer drafts grown on the clock).
        shared = self.shared.speculate(context, self.opts, limit, self.shared_matches, mine.score)
        self.last, self.last_source = (mine, "request") if mine.score >= shared.score else (shared, "shared")
        if self.last.tokens:
            self.count("drafted_steps")
            self.count("shared_steps", int(self.last_source == "shared"))
            self.count("match_len", self.last.match_len)
            self.count("draft_score", self.last.score)
        return DraftTree(tuple(self.last.tokens), tuple(self.last.parents))

    def describe(self) -> dict:
        return asdict(self.opts) | {
            "state": "cross-request tree learns each finished answer in run order (drafts depend on "
            "question order); emptied before the first timed question"
        }
