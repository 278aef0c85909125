"""`specbench train-head --model TARGET --prompts SOURCE --out DIR`: answers, features, head, in one go.

1. every check that needs no model (numbers, the output folder), then the target loads (frozen);
2. the prompts (JSON/JSONL files such as gsm8k/train.jsonl and new_codealpaca.json, or `jsonl:PATH`;
   a built-in evaluation suite, by name or by its pinned file, is refused;
   `--prompts` repeats, `--max-prompts` caps each source) are answered greedily in batches of `--batch-size`, features taken in the same pass; the shards go to
   `DIR/data/<key>/`, keyed by target and generation settings, so a rerun reuses them;
3. the head trains (`train.py`) and DIR gets its weights, manifest and training curve.
Evaluation refuses a head whose prompts are the suite being evaluated (the datastores' overlap check).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..types import SpecbenchError
from .train import TrainSettings

MAX_LEN = 2048  # tokens per training sequence (EAGLE's max_len)


def run_train_head(
    model: str,
    prompts: list[str],
    out: Path,
    settings: TrainSettings,
    max_prompts: int | None = None,
    batch_size: int | None = None,  # None: generation.default_batch for the device
    max_new_tokens: int = 256,
    device: str = "auto",
    dtype: str = "auto",
    console=None,
) -> dict:
    from ..evaluate import resolve_device
    from ..generation import default_batch
    from ..models import load_model
    from ..options import parse_options
    from .data import check_prompt_sources, load_prompt_set, make_sequences
    from .model import MANIFEST_FILE, WEIGHTS_FILE, check_target
    from .train import CURVE_FILE, STATE_FILE, train_head

    parse_options(
        TrainSettings, {k: getattr(settings, k) for k in settings.__dataclass_fields__}, "train-head"
    )
    for name, value in (("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise SpecbenchError(f"{name} must be at least 1, got {value}")
    if max_prompts is not None and max_prompts < 2:
        raise SpecbenchError(f"--max-prompts must be at least 2 (one for validation), got {max_prompts}")
    if not prompts:
        raise SpecbenchError("--prompts is empty; give a prompt file (.jsonl/.json) or a suite spec")
    check_prompt_sources(prompts)  # never an evaluation suite
    if max_new_tokens >= MAX_LEN:
        raise SpecbenchError(f"--max-new-tokens must be below {MAX_LEN}, got {max_new_tokens}")
    # An existing --out must be a head folder, possibly an interrupted one (answers only): it resumes.
    ours = {"data", MANIFEST_FILE, WEIGHTS_FILE, STATE_FILE, CURVE_FILE}
    if out.exists() and (
        not out.is_dir() or any(p.name not in ours and p.suffix != ".tmp" for p in out.iterdir())
    ):
        raise SpecbenchError(f"--out {out} exists and is not a head folder; choose another --out")
    # A folder that holds another target's head is refused before any answer is generated into it:
    # by name before the load, by fingerprint (weights, tokenizer, shapes) right after it.
    previous = json.loads((out / MANIFEST_FILE).read_text()) if (out / MANIFEST_FILE).is_file() else None
    if previous is not None and (previous.get("target") or {}).get("name") not in (None, model):
        raise SpecbenchError(
            f"--out {out} holds a head trained for '{previous['target']['name']}', not for '{model}'; "
            "choose another --out"
        )
    dev, dt = resolve_device(device, dtype)
    log = console.print if console is not None else print
    log(f"loading {model} ({dt}, {dev})")
    loaded = load_model(model, dtype=dt, device=dev)
    if previous is not None:
        check_target(out, previous, loaded)
    prompt_set = load_prompt_set(prompts, loaded, max_prompts)
    batch_size = batch_size or default_batch(loaded.device)
    generation = {
        "target_weights": loaded.sha256,
        "target": loaded.name,
        "dtype": dt,
        "prompts_sha256": prompt_set.corpus["sha256"],
        "prompts": len(prompt_set.ids),
        "max_new_tokens": max_new_tokens,
        "max_len": MAX_LEN,
        "decoding": "greedy",
    }
    key = hashlib.sha256(json.dumps(generation, sort_keys=True).encode()).hexdigest()[:12]
    log(f"answering {len(prompt_set.ids)} prompts (<= {max_new_tokens} new tokens, batches of {batch_size})")
    sequences = make_sequences(
        loaded, prompt_set.ids, out / "data" / key, batch_size, max_new_tokens, MAX_LEN, log
    )
    manifest = train_head(loaded, sequences, settings, out, prompt_set.corpus, generation, log)
    val = manifest.get("validation") or {}
    log(
        f"head written to {out}: validation top-1 {val.get('top1', float('nan')):.3f}, "
        f"top-3 {val.get('top3', float('nan')):.3f} ({manifest['train_seconds']} s training)"
    )
    return manifest
