"""EAGLE's draft head (Li et al., ICML 2024; EAGLE-2, EMNLP 2024), and its checkpoint folder.

The head predicts the target's next last-layer feature from the current one and the token that
follows it (SafeAILab/EAGLE `eagle/model/cnets1.py`, the EAGLE-1/2 head):

    x_i   = fc(concat(embed(t_{i+1}), f_i))       fc: 2H -> H, with bias
    f'_{i+1} = norm(decoder_layer(x_i))            one layer of the target's own kind, without its
                                                   input layernorm (EAGLE drops it on layer 0), then
                                                   the target's frozen final norm
    logits = lm_head(f'_{i+1})                     the target's frozen LM head

`f_i` is the target's final hidden state at position i *after* its final norm (transformers'
`hidden_states[-1]`, EAGLE's `outputs[0]`). EAGLE-1/2 feed their layer's output straight into the LM
head; we put the target's final norm in between (as EAGLE-3's head does) because our layer starts
as a copy of the target's last decoder layer, whose output is the un-normalised residual stream:
without the norm the first predictions are ~15x the features' scale (measured on SmolLM2-135M:
smooth-L1 17.6, cross-entropy 268 at step 1) and a short run spends its steps shrinking them.
The embedding, final norm and LM head are the target's own modules, shared and frozen; only fc and
the layer are the head's (saved in `head.safetensors`). fc has PyTorch's default init, as in EAGLE.

The head is a drop-in "model" for the engine's runners: it takes the runner's `input_ids`, positions,
4-D mask and slot cache, and reads the features of those inputs from `features_in`, a buffer the
drafter fills before each forward. The buffer never moves, so a CUDA graph captured over the head
replays with whatever the drafter wrote there.

A checkpoint folder holds `head.safetensors`, `manifest.json` (target fingerprint, data, settings,
validation accuracy) and, while training, `train_state.pt`. `load_head` refuses a folder made for
another target.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..files import read_versioned_json
from ..types import LoadedModel, SpecbenchError

FORMAT_VERSION = 1
WEIGHTS_FILE = "head.safetensors"
MANIFEST_FILE = "manifest.json"
FEATURE_ROWS = 512  # rows of `features_in`: the longest single head forward (longer catch-ups are chunked)


def decoder_of(model: Any) -> Any:
    """The target's decoder stack (LlamaModel, Qwen2Model, ...): the module holding `layers` and `embed_tokens`."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    if not hasattr(decoder, "layers") or not hasattr(decoder, "rotary_emb"):
        raise SpecbenchError(
            f"an EAGLE head needs a decoder with `layers` and rotary embeddings; {type(model).__name__} has none"
        )
    return decoder


class EagleHead(nn.Module):
    # Input i of a forward reads row i of `features_in`: a runner must not split one forward into
    # several (the compiled runner's chunked prefill), each of which would read rows from 0 again.
    reads_inputs_by_row = True

    def __init__(self, target: Any, feature_rows: int = FEATURE_ROWS):
        super().__init__()
        decoder = decoder_of(target)
        config = copy.deepcopy(target.config.get_text_config())
        config.num_hidden_layers = 1
        if getattr(
            config, "layer_types", None
        ):  # per-layer attention kinds (sliding windows): the last one's
            config.layer_types = [config.layer_types[-1]]
        self.config = config
        hidden = config.hidden_size
        first = next(target.parameters())
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        last = decoder.layers[-1]
        self.layer = type(last)(config, 0)
        self.layer.input_layernorm = nn.Identity()
        with torch.no_grad():
            own = {k: v for k, v in last.state_dict().items() if not k.startswith("input_layernorm.")}
            self.layer.load_state_dict(own)
        self.to(device=first.device, dtype=first.dtype)
        # The target's embedding, LM head, rotary embedding and final norm: shared and frozen, not the head's own
        # parameters (a plain tuple keeps them out of parameters() and state_dict()).
        self.shared = (decoder.embed_tokens, target.get_output_embeddings(), decoder.rotary_emb, decoder.norm)
        # transformers 5 renamed the layers' `past_key_values` argument `cache` (the old name warns).
        self._cache_kw = (
            "cache" if "cache" in inspect.signature(self.layer.forward).parameters else "past_key_values"
        )
        self.register_buffer(
            "features_in",
            torch.zeros(feature_rows, hidden, dtype=first.dtype, device=first.device),
            persistent=False,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: Any = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        features: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **_: Any,
    ) -> Any:
        """`features` (B, n, H) pairs with `input_ids` (B, n); without it (the runners) `features_in[:n]`."""
        n = input_ids.shape[1]
        if features is None:
            features = self.features_in[:n]
            if n > features.shape[0]:  # a longer forward than the drafter makes (a cost probe): zeros
                features = torch.cat([features, features.new_zeros(n - features.shape[0], features.shape[1])])
            features = features.unsqueeze(0)
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).unsqueeze(0)
        out = self.predict(input_ids, features, position_ids, attention_mask, past_key_values, use_cache)
        kept = out[:, -logits_to_keep:] if logits_to_keep else out
        # transformers' output type (what the runners read, and what torch.compile traces natively):
        # logits (B, n, V) and the predicted features as the last hidden state.
        return CausalLMOutputWithPast(logits=self.shared[1](kept), hidden_states=(out,))

    def predict(
        self,
        input_ids: torch.Tensor,
        features: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: Any,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> torch.Tensor:
        """The predicted next features (B, n, H): fc over [embedding; feature], then the layer."""
        embed, _, rotary, norm = self.shared
        x = self.fc(torch.cat([embed(input_ids).to(features.dtype), features], dim=-1))
        out = self.layer(
            x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=rotary(x, position_ids),
            **{self._cache_kw: past_key_values},
        )
        return norm(out[0] if isinstance(out, tuple) else out)

    def own_state(self) -> dict[str, torch.Tensor]:
        """The head's own weights (fc and the layer), what a checkpoint stores."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("fc.", "layer."))}


# ---------------------------------------------------------------------------------------------------
# Which target a head belongs to


def target_fingerprint(loaded: LoadedModel) -> dict:
    """What must match for a head to fit a target: weights, tokenizer and shapes."""
    from ..models import tokenizer_fingerprint

    config = loaded.model.config.get_text_config()
    return {
        "name": loaded.name,
        "weights_sha256": loaded.sha256,
        "tokenizer": tokenizer_fingerprint(loaded.tokenizer),
        "architecture": type(loaded.model).__name__,
        "hidden_size": int(config.hidden_size),
        "layers": int(config.num_hidden_layers),
        "vocab_size": loaded.vocab_size,
    }


def check_target(folder: Path, manifest: dict, loaded: LoadedModel) -> None:
    """One-line refusal when `manifest` was written for another target."""
    want, have = manifest.get("target") or {}, target_fingerprint(loaded)
    shapes = ("tokenizer", "architecture", "hidden_size", "layers", "vocab_size")
    same = all(want.get(k) == have[k] for k in shapes)
    if want.get("weights_sha256") and have["weights_sha256"]:
        same = same and want["weights_sha256"] == have["weights_sha256"]
    elif same:  # weights of unknown hash (a hub id): the name has to agree
        same = want.get("name") == have["name"]
    if not same:
        theirs = str(want.get("weights_sha256") or want.get("tokenizer"))[:12]
        ours = str(have["weights_sha256"] or have["tokenizer"])[:12]
        raise SpecbenchError(
            f"draft head {folder} was trained for '{want.get('name')}' ({theirs}), not for '{loaded.name}' "
            f"({ours}); train one with `specbench train-head --model {loaded.name}`"
        )


def read_manifest(folder: Path) -> dict:
    missing = f"{folder} is not a draft head (no {MANIFEST_FILE} and {WEIGHTS_FILE}); make one with `specbench train-head`"
    if not (Path(folder) / WEIGHTS_FILE).is_file():
        raise SpecbenchError(missing)
    return read_versioned_json(Path(folder) / MANIFEST_FILE, FORMAT_VERSION, missing, "train the head again")


def load_head(folder: Path, loaded: LoadedModel) -> tuple[EagleHead, dict]:
    """The head in `folder`, on the target's device and dtype, frozen; refused if made for another target."""
    from safetensors.torch import load_file

    manifest = read_manifest(folder)
    check_target(folder, manifest, loaded)
    head = EagleHead(loaded.model)
    state = load_file(str(Path(folder) / WEIGHTS_FILE), device=str(next(head.parameters()).device))
    missing, unexpected = head.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith(("fc.", "layer."))]
    if missing or unexpected:
        raise SpecbenchError(
            f"draft head {folder} does not fit {loaded.name}: missing {missing[:3]}, extra {unexpected[:3]}"
        )
    head.eval().requires_grad_(False)
    return head, manifest


def check_head_for_eval(folder: Path, loaded: LoadedModel, suites: list, force: bool) -> dict:
    """Refuse a head made for another target or trained on a suite being evaluated (unless `force`,
    which the report then shows, as for datastores); returns a summary for config.json."""
    from ..datastores.manifest import manifest_sha256, suite_overlap

    manifest = read_manifest(folder)
    check_target(folder, manifest, loaded)
    notes = []
    for s in suites:
        leak = suite_overlap(manifest, s.name, s.sha256)
        if leak and not force:
            raise SpecbenchError(
                f"draft head {folder} leaks the evaluation questions: {leak}; train it on another prompt "
                "set (or pass --force-datastore, and the report will say so)"
            )
        if leak:
            notes.append(f"draft head used despite a leak (--force-datastore): {leak}")
    return {
        "path": str(folder),
        "manifest_sha256": manifest_sha256(folder),
        "corpus": (manifest.get("corpus") or {}).get("description"),
        "validation": manifest.get("validation"),
        "note": "; ".join(notes) or None,
    }
