"""Plain data shared by the engine, the drafters, the suites and the report.

Nothing here imports torch at module level, so `specbench --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


class SpecbenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


@dataclass(frozen=True)
class DraftTree:
    """A draft hanging off the root (the last committed token, which is not stored here).

    `parents[i]` is the index of node i's parent, or -1 for a child of the root. Parents always come
    before their children, so any prefix of the node list is itself a valid tree.
    `relaxed[i]` marks nodes that a lossy verifier may accept by its relaxed rule (ReSpec); None = none.
    """

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    relaxed: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("DraftTree: tokens and parents differ in length")
        if self.relaxed is not None and len(self.relaxed) != len(self.tokens):
            raise ValueError("DraftTree: relaxed and tokens differ in length")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> DraftTree:
        return cls()

    @classmethod
    def chain(cls, tokens: list[int] | tuple[int, ...]) -> DraftTree:
        toks = tuple(int(t) for t in tokens)
        return cls(toks, tuple(range(-1, len(toks) - 1)))

    @classmethod
    def from_paths(cls, paths: list[list[int]], max_nodes: int | None = None) -> DraftTree:
        """Merge token paths into a trie (shared prefixes become one node), in insertion order.

        Paths are taken in the order given (put the best first); nodes beyond `max_nodes` are dropped,
        which keeps the tree valid because parents precede children.
        """
        tokens: list[int] = []
        parents: list[int] = []
        children: dict[tuple[int, int], int] = {}  # (parent index, token) -> node index
        for path in paths:
            parent = -1
            for tok in path:
                key = (parent, int(tok))
                node = children.get(key)
                if node is None:
                    if max_nodes is not None and len(tokens) >= max_nodes:
                        break
                    node = len(tokens)
                    tokens.append(int(tok))
                    parents.append(parent)
                    children[key] = node
                parent = node
        return cls(tuple(tokens), tuple(parents))

    # The verification forward runs [root] + nodes, so tree node i is forward input i + 1 and input 0
    # is the root. These three are the only place that knows it (decode loop, verifier, tests).

    @staticmethod
    def input_of(node: int) -> int:
        """Forward input index of tree node `node` (-1, the root, gives input 0)."""
        return node + 1

    @staticmethod
    def node_of(input_index: int) -> int:
        """Tree node at forward input `input_index` (input 0, the root, gives -1)."""
        return input_index - 1

    def input_parents(self) -> list[int]:
        """Parent input of every forward input: -1 for the root, then each node's parent's input
        (`input_of` inlined: this runs every step over every node)."""
        return [-1, *map((1).__add__, self.parents)]

    def depths(self) -> list[int]:
        """Depth of every node (children of the root have depth 1)."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    def depth(self) -> int:
        return max(self.depths(), default=0)

    def paths(self) -> list[list[int]]:
        """Every root-to-leaf token path (for tests and debugging)."""
        has_child = set(p for p in self.parents if p >= 0)
        out = []
        for i in range(len(self.tokens)):
            if i in has_child:
                continue
            path, node = [], i
            while node >= 0:
                path.append(self.tokens[node])
                node = self.parents[node]
            out.append(path[::-1])
        return out


@dataclass
class DraftContext:
    """What a drafter sees before each verification step.

    `tokens` holds every committed token: the prompt, the generated text, and last the root token
    (chosen by the target but not yet run through it). `hidden` and `logits` are the target's final
    hidden state and logits at the position that produced the root (only filled in when the drafter
    sets `needs_hidden_states` / `needs_logits`), taken from the verifier's own forward: views of
    the compiled runner's outputs, valid during this `propose` only (copy what must be kept).
    `tokens` is a new list every step and is never changed afterwards.
    `features` (only for a drafter that sets `needs_features`, e.g. an EAGLE head) holds in rows
    [0, len(tokens) - 1) the target's final hidden state at every committed position (the prompt's
    from the prefill, the accepted path's from each verification); it is one buffer per generation,
    written in place, so a reference kept from an earlier step stays current.
    """

    tokens: list[int]
    max_nodes: int
    temperature: float = 0.0
    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    # The same tokens as an int64 array, read-only: the decode loop keeps one buffer per generation and
    # appends each step's tokens, so a drafter that searches with numpy pays no conversion per step
    # (2,000 tokens: ~80 us for np.asarray on a CPU). None when whoever built the context gave none.
    token_array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        """`tokens` as an int64 numpy array (the decode loop's buffer when there is one)."""
        import numpy as np

        if self.token_array is not None:
            return self.token_array
        return np.asarray(self.tokens, dtype=np.int64)


@dataclass
class StepFeedback:
    """What the verifier tells the drafter after a step."""

    tree: DraftTree
    accepted_nodes: list[int]  # indices into tree.tokens along the accepted path, root excluded
    committed: list[int]  # tokens committed by this step: accepted drafts + the bonus token
    tokens: list[int]  # all committed tokens after this step (ends with the new root)
    # Only for a drafter with `needs_node_topk = k`: an (inputs, k) int64 array whose row i holds the k
    # most likely next tokens (best first) from the target's logits at input i of this step's forward
    # (0 = the root, i + 1 = node i).
    node_topk: np.ndarray | None = None
    relaxed_accepts: int = 0  # accepted nodes only a relaxed verifier rule let through (ReSpec)


@dataclass
class StepRecord:
    """Per-step counts and times (seconds, device-synchronised)."""

    draft_nodes: int
    draft_depth: int
    accepted: int  # draft tokens accepted (bonus excluded)
    committed: int  # tokens this step added to the output (after EOS / length truncation)
    # The inputs of each forward of draft-model runners while proposing this step's tree.
    draft_forward_inputs: list[int] = field(default_factory=list)
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_other: float = 0.0
    # GPU time of the draft runners' graph forwards during this step (None: not measured, e.g. on the
    # CPU). t_draft / t_draft_forward is what drafting pays on top of its forwards (host work, syncs).
    t_draft_forward: float | None = None

    @property
    def draft_forwards(self) -> int:
        return len(self.draft_forward_inputs)


@dataclass
class Generation:
    """One generated turn."""

    output_ids: list[int]
    steps: list[StepRecord]
    wall_time: float
    prefill_time: float
    stop_reason: str  # "eos" | "length" | "cache"
    # Per output token, when asked for (`generate(..., margins=True)`, done for `ar`): the target's top-1
    # logit and its margin over the top-2 at the position that chose the token (divergence audit).
    top1_logits: list[float] | None = None
    top2_margins: list[float] | None = None

    @property
    def new_tokens(self) -> int:
        return len(self.output_ids)


@dataclass(frozen=True)
class Question:
    """One benchmark item in Spec-Bench's question.jsonl shape."""

    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class LoadedModel:
    """A model ready to run, plus what env.json needs to record about it."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    name: str  # alias, hub id or path as the user gave it
    source: str  # resolved local path or hub id
    sha256: str | None  # of the weights file(s) when known
    dtype: str
    device: str

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return []
        return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


@dataclass
class MethodSetup:
    """Everything a drafter may be built from. A drafter never receives the target's KV cache."""

    target: LoadedModel
    draft: LoadedModel | None = None
    datastores: dict[str, Path] = field(default_factory=dict)  # method name -> datastore folder
    options: dict[str, Any] = field(default_factory=dict)  # method-specific overrides
    temperature: float = 0.0
    seed: int = 0
    runners: Any = None  # engine.factory.RunnerFactory; None = eager runners of 4,096 slots
    draft_head: Path | None = None  # --draft-head: an EAGLE head folder from `specbench train-head`

    def draft_runner(self, max_nodes: int = 63) -> Any:
        """A runner for the draft model, of the kind the engine chose (drafters never build their own)."""
        if self.draft is None:
            raise SpecbenchError("this method needs --draft-model")
        return self.runner_for(self.draft.model, max_nodes)

    def runner_for(self, model: Any, max_nodes: int = 63) -> Any:
        """A runner for any draft network (a draft model, an EAGLE head) from the engine's factory."""
        if self.runners is None:
            from .engine.factory import RunnerFactory

            self.runners = RunnerFactory()
        return self.runners.make(model, max_nodes)
