"""Retrieval datastores built by `specbench build-index --method M`.

A method adds one line to DATASTORE_METHODS: name -> ("module:build_function", description), where
    build_function(model_spec, corpus_spec, out_dir, options, console) -> manifest dict
builds into a temporary sibling of out_dir and renames it at the end (see suffix.build_rest_store).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..types import SpecbenchError

DATASTORE_METHODS: dict[str, tuple[str, str]] = {
    "rest": (
        "specbench_cli.datastores.suffix:build",
        "REST: suffix array over the corpus tokens (exact n-gram match)",
    ),
    "dresd": (
        "specbench_cli.datastores.dense:build",
        "DReSD: target hidden states -> z-score + PCA + L2 keys in FAISS, next 20 tokens as values",
    ),
    "sam": (
        "specbench_cli.datastores.sam:build",
        "SAM-decoding: suffix automaton over the corpus tokens (longest match)",
    ),
}


def build_index(
    method: str, model_spec: str, corpus_spec: str, out_dir: Path, options: dict, console
) -> dict:
    """Build a datastore for `method` from `corpus_spec` with `model_spec`'s tokenizer (or model)."""
    if method not in DATASTORE_METHODS:
        raise SpecbenchError(
            f"unknown datastore method '{method}'; choose from: {', '.join(DATASTORE_METHODS)}"
        )
    out_dir = Path(out_dir)
    # Checked before any model is loaded, so a mistake costs nothing.
    if out_dir.exists() and not options.get("force"):
        raise SpecbenchError(f"output folder {out_dir} already exists; pass --force to overwrite it")
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecbenchError(f"--out {out_dir} is a file, not a folder")
    module, _, attr = DATASTORE_METHODS[method][0].partition(":")
    build = getattr(importlib.import_module(module), attr)
    return build(model_spec, corpus_spec, out_dir, options, console)
