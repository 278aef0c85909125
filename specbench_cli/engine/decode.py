"""The one decode loop every method runs through.

    engine = Engine(loaded_model, max_len=4096)
    gen = generate(engine, drafter, prompt_ids, max_new_tokens=256)

Each step: the drafter proposes a tree below the root (the last committed token), the target runs
once over [root] + tree, the verifier picks the accepted path and a bonus token, the runner keeps the
accepted K/V, and the bonus becomes the next root. `ar` proposes nothing, so the baseline runs the
very same code with one-token forwards.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..drafters.base import Drafter
from ..types import DraftContext, DraftTree, Generation, LoadedModel, StepFeedback, StepRecord
from .events import EventPool
from .factory import RunnerFactory
from .verifier import choices_with_topk, sample_tokens, verify

DEFAULT_MAX_NODES = 128
MARGIN_BATCH = 64  # steps whose chosen rows get their top-2 logits in one batch (margins=True)


class StepClock:
    """Step timestamps: CUDA events on a GPU (no extra synchronisation), perf_counter on the CPU.

    On CUDA, `mark()` records an event in the stream; durations are read once per generation in
    `seconds()`, after the final synchronisation. Every step already synchronises when the verifier
    reads the accepted tokens, so a draft computed on the host while the GPU idles shows up between
    two marks as its host time, and queued GPU work (the forward, the KV compaction) as its GPU time.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        # Reused from one generation to the next: each was read after the last one's final sync.
        self._events = EventPool()

    def start(self) -> None:
        """A new generation: its marks reuse the events of the last one."""
        self._events.reset()

    def mark(self):
        return self._events.record() if self.cuda else time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start

    def finish(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@dataclass
class Engine:
    """The target model with its runner, and the factory that gives drafters theirs.

    `kind="compiled"` runs the target (and every draft model built through `runners`) from CUDA graphs.
    """

    loaded: LoadedModel
    max_len: int = 4096
    max_nodes: int = DEFAULT_MAX_NODES
    kind: str = "eager"
    compile_mode: str | None = "default"
    draft_compile_mode: str | None = "default"

    def __post_init__(self) -> None:
        self.runners = RunnerFactory(self.kind, self.max_len, self.compile_mode, self.draft_compile_mode)
        self.runner = self.runners.make(self.loaded.model, self.max_nodes, role="target")
        self.eos = set(self.loaded.eos_ids)
        self.vocab_size = self.loaded.vocab_size
        self.clock = StepClock(self.runner.device)


def read_only(view: np.ndarray) -> np.ndarray:
    view.flags.writeable = False  # the buffer's other views stay writable; this one is the drafter's
    return view


def sanitize(tree: DraftTree, vocab_size: int, max_nodes: int) -> DraftTree:
    """Cut a drafter's tree at its first malformed node and at the node budget.

    A bad tree can cost speed but never correctness: the verifier only needs parents before children
    and token ids the model can embed.
    """
    n = len(tree)
    # The common case in C-level passes (min, max, map): a well-formed tree within budget, as is.
    if n == 0 or (
        n <= max_nodes
        and min(tree.tokens) >= 0
        and max(tree.tokens) < vocab_size
        and min(tree.parents) >= -1
        and all(map(operator.lt, tree.parents, range(n)))
    ):
        return tree
    keep = 0
    for i, (tok, parent) in enumerate(zip(tree.tokens, tree.parents)):
        if i >= max_nodes or not (0 <= tok < vocab_size) or not (-1 <= parent < i):
            break
        keep = i + 1
    relaxed = tree.relaxed[:keep] if tree.relaxed is not None else None
    return DraftTree(tuple(tree.tokens[:keep]), tuple(tree.parents[:keep]), relaxed)


def generate(
    engine: Engine,
    drafter: Drafter,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    margins: bool = False,
) -> Generation:
    """`margins`: also record, per output token, the top-1 logit and the top-1/top-2 margin of the row
    that chose it (kept on the device, read once at the end: one small top-k per step)."""
    runner, clock = engine.runner, engine.clock
    want_features = drafter.needs_features
    want_hidden = drafter.needs_hidden_states or want_features
    want_logits = drafter.needs_logits
    topk = drafter.needs_node_topk  # > 0: the drafter learns the top-k of every forwarded input
    vopts = drafter.verify_options()
    runner.reset()
    runner.ensure_capacity(len(prompt_ids) + max_new_tokens + engine.max_nodes + 2)

    wall_start = time.perf_counter()
    clock.start()
    start = clock.mark()
    drafter.reset(list(prompt_ids))
    # The drafter's per-turn setup (indexing the prompt: a suffix trie, an automaton state) is the
    # prefill step's drafting time, so that the prefill's own time is the same work for every method.
    reset_done = clock.mark()
    logits, hidden = runner.forward(
        list(prompt_ids), want_hidden=want_hidden, last_only=True, all_hidden=want_features
    )
    features = None
    if want_features:
        # Row j: the target's final hidden state at committed position j (ctx.features).
        features = hidden.new_empty((runner.max_len, hidden.shape[-1]))
        features[: len(prompt_ids)] = hidden
    runner.commit(list(range(len(prompt_ids))))
    root = sample_tokens(logits[-1:], temperature, generator)[0]
    top2 = [logits[-1:].float().topk(2, dim=-1).values] if margins else []
    # The chosen rows wait here and get their top-2 in one batch per MARGIN_BATCH steps: a top-k per
    # step costs `ar` (the only method that records margins) ~0.27 ms of host time per token on an
    # H200 host (bench/results/2026-12-03-h200-head-methods: ar's t_other 0.35 ms vs pld's 0.08),
    # which would slow the reference and inflate every speedup.
    margin_rows: list[torch.Tensor] = []

    def flush_margins() -> None:
        top2.append(torch.cat(margin_rows).float().topk(2, dim=-1).values)
        margin_rows.clear()

    prefill_done = clock.mark()
    out = [root]
    # Every committed token (prompt, output, the root last) in one int64 buffer, appended in place:
    # drafters read a read-only view of it (ctx.token_array) instead of converting the list each step.
    context = np.empty(len(prompt_ids) + max_new_tokens + 1, dtype=np.int64)
    context[: len(prompt_ids)] = prompt_ids
    context[len(prompt_ids)] = root
    n_context = len(prompt_ids) + 1
    steps = [StepRecord(0, 0, 0, 1)]
    marks = [(start, reset_done, prefill_done, prefill_done)]
    stop = "eos" if root in engine.eos else ""
    # Only what the drafter reads: indexing a row is a kernel launch and a few us of host time a step.
    last_logits = logits[-1] if want_logits else None
    last_hidden = hidden[-1] if hidden is not None else None
    # The committed tokens as a list, rebuilt once a step (a new list, never changed in place: a
    # drafter may keep the one it was given); the step's feedback and the next context share it.
    tokens = list(prompt_ids) + out

    draft_runners = [r for role, r in engine.runners.made if role == "draft"]
    # Graph forwards of draft runners carry CUDA events (no extra sync: read after the verifier's).
    timed_drafts = [r for r in draft_runners if getattr(r, "use_graphs", False)]
    for r in timed_drafts:
        r.profile = True
        r.take_forward_times()
    while not stop and len(out) < max_new_tokens:
        for r in draft_runners:  # each draft forward's inputs, this step
            r.forward_log = []
        t0 = clock.mark()
        room = runner.max_len - runner.length - 1
        if room < 1:
            stop = "cache"
            break
        ctx = DraftContext(
            tokens=tokens,
            max_nodes=min(engine.max_nodes, room - 1),
            temperature=temperature,
            hidden=last_hidden,
            logits=last_logits,
            features=features,
            token_array=read_only(context[:n_context]),
        )
        tree = sanitize(drafter.propose(ctx), engine.vocab_size, ctx.max_nodes)
        t1 = clock.mark()

        # Uncopied outputs (copy=False): everything below reads them before the target's next forward,
        # and ctx.logits / ctx.hidden are read in the next `propose`, before it too. Margins keep
        # rows across steps, so a run that records them takes copies.
        logits, hidden = runner.forward(
            [root, *tree.tokens], tree.input_parents(), want_hidden=want_hidden, copy=margins
        )
        # With node top-k, the verifier's choices come back in the same host copy as the top-k rows.
        picks, node_topk = choices_with_topk(logits, topk, temperature, generator) if topk else (None, None)
        verdict = verify(tree, logits, temperature, generator, picks=picks, **vopts)
        t2 = clock.mark()

        kept = [0] + [tree.input_of(n) for n in verdict.accepted_nodes]
        if margins:  # row kept[j] chose committed token j
            # A plain step keeps its only row: no indexing kernel on the clock.
            margin_rows.append(logits if kept == list(range(len(logits))) else logits[kept])
            if len(margin_rows) >= MARGIN_BATCH:
                flush_margins()
        if features is not None:
            features[runner.length : runner.length + len(kept)] = hidden[kept]
        runner.commit(kept)
        last = kept[-1]
        last_logits = logits[last] if want_logits else None
        last_hidden = hidden[last] if hidden is not None else None
        committed = [tree.tokens[n] for n in verdict.accepted_nodes] + [verdict.bonus]
        # Stop exactly where plain decoding would: after the first EOS, or at the length budget.
        for i, tok in enumerate(committed):
            if tok in engine.eos:
                committed, stop = committed[: i + 1], "eos"
                break
        if len(out) + len(committed) >= max_new_tokens:
            committed = committed[: max_new_tokens - len(out)]
            stop = stop or "length"
        out.extend(committed)
        context[n_context : n_context + len(committed)] = committed
        n_context += len(committed)
        root = committed[-1]
        tokens = tokens + committed
        feedback = StepFeedback(
            tree, verdict.accepted_nodes, committed, tokens, node_topk, verdict.relaxed_accepts
        )
        drafter.update(feedback)
        t3 = clock.mark()
        steps.append(
            StepRecord(
                draft_nodes=len(tree),
                draft_depth=tree.depth(),
                accepted=len(verdict.accepted_nodes),
                committed=len(committed),
                draft_forward_inputs=[n for r in draft_runners for n in r.forward_log],
                t_draft_forward=sum(sum(r.take_forward_times()) for r in timed_drafts)
                if timed_drafts
                else None,
            )
        )
        marks.append((t0, t1, t2, t3))
    clock.finish()
    wall = time.perf_counter() - wall_start
    for r in timed_drafts:
        r.profile = False
    for r in draft_runners:
        r.forward_log = None
    for rec, (t0, t1, t2, t3) in zip(steps, marks):
        rec.t_draft, rec.t_verify, rec.t_other = (
            clock.seconds(t0, t1),
            clock.seconds(t1, t2),
            clock.seconds(t2, t3),
        )
    gen = Generation(out, steps, wall, clock.seconds(reset_done, prefill_done), stop or "length")
    if margins:
        if margin_rows:
            flush_margins()
        top = torch.cat(top2)[: len(out)].tolist()  # truncation at EOS / length cuts the tail rows
        gen.top1_logits = [a for a, _ in top]
        gen.top2_margins = [a - b for a, b in top]
    return gen
