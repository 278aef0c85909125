"""Retrieval datastores built by `specbench build-index --method KIND`.

A kind adds one line to `registry.DATASTORES`: name -> ("module:build_function", description), where
    build_function(model_spec, corpus_spec, out_dir, options, console) -> manifest dict
builds into a temporary sibling of out_dir and renames it at the end (see suffix.build_rest_store).
"""

from __future__ import annotations

from pathlib import Path

from ..registry import DATASTORES
from ..types import SpecbenchError


def build_index(
    method: str, model_spec: str, corpus_spec: str, out_dir: Path, options: dict, console
) -> dict:
    """Build a datastore for `method` from `corpus_spec` with `model_spec`'s tokenizer (or model)."""
    DATASTORES.check(method)
    out_dir = Path(out_dir)
    # Checked before any model is loaded, so a mistake costs nothing.
    if out_dir.exists() and not options.get("force"):
        raise SpecbenchError(f"output folder {out_dir} already exists; pass --force to overwrite it")
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecbenchError(f"--out {out_dir} is a file, not a folder")
    build = DATASTORES.get(method)
    return build(model_spec, corpus_spec, out_dir, options, console)
