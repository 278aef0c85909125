"""`manifest.json`: what a datastore was built from, so `eval` can refuse one that does not fit.

Every datastore kind writes the same top-level fields (build.py writes them; a kind adds its own
fields and its options under "build.params"):

    format_version   int, FORMAT_VERSION when written (2: "files" records sizes and checksums)
    method           "rest" | "dresd" | "sam"
    specbench_version, created (UTC, ISO 8601)
    tokenizer        {"name", "fingerprint", "vocab_size"}
    corpus           {"spec", "kind", "description", "sha256", "files": [{"name", "sha256"}],
                      "suite", "suite_sha256"}   (suite fields only for `generate:` corpora)
    tokens, documents
    build            {"params", "seconds", "peak_rss_mb", "bytes_on_disk", ...}
    files            {file name: {"size", "sha256"}} for every store file (base.py checks them on open)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..files import read_versioned_json, write_atomic
from ..types import SpecbenchError

FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"


def new_manifest(method: str, tokenizer: dict, corpus: dict, params: dict) -> dict:
    """The fields known before a build starts; the builder adds counts, timings and files."""
    from .. import __version__

    return {
        "format_version": FORMAT_VERSION,
        "method": method,
        "specbench_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": dict(tokenizer),
        "corpus": dict(corpus),
        "build": {"params": dict(params)},
    }


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write manifest.json atomically (a reader never sees half a file)."""
    return write_atomic(Path(folder) / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    missing = f"{folder} is not a datastore (no {MANIFEST_FILE}); build one with `specbench build-index`"
    manifest = read_versioned_json(path, FORMAT_VERSION, missing, "rebuild the datastore with --force")
    if "method" not in manifest:
        raise SpecbenchError(f"{path} has no 'method' field; rebuild the datastore with --force")
    return manifest


def _base_suite(label: str) -> str:
    # "spec-bench#summarization" was drawn from the same file as "spec-bench".
    return label.split("#", 1)[0]


def suite_overlap(manifest: dict, suite_label: str | None, suite_sha256: str | None) -> str | None:
    """Why the datastore's corpus contains the suite being evaluated, or None when it does not."""
    corpus: dict[str, Any] = manifest.get("corpus") or {}
    if suite_sha256:
        hashes = {corpus.get("sha256"), corpus.get("suite_sha256")}
        hashes |= {f.get("sha256") for f in corpus.get("files") or [] if isinstance(f, dict)}
        if suite_sha256 in hashes:
            return f"its corpus ({corpus.get('description', corpus.get('spec'))}) contains the question file of suite '{suite_label}' (sha256 {suite_sha256[:12]})"
    # A corpus joined from several sources (generate:A,B) records their labels joined by "+".
    for built_from in str(corpus.get("suite") or "").split("+"):
        if suite_label and built_from and _base_suite(built_from) == _base_suite(suite_label):
            return f"it was generated from suite '{built_from}', which is the suite being evaluated ('{suite_label}')"
    return None


def prompt_format_mismatch(folder: Path, prompt_format: str) -> str | None:
    """A warning when a `generate:` store answered prompts laid out otherwise than this eval's (its
    drafts then continue another kind of answer); None when they match or the corpus is plain text."""
    corpus = read_manifest(folder).get("corpus") or {}
    if corpus.get("kind") != "generate":
        return None
    built_with = corpus.get("prompt_format", "chat")  # stores from before the option answered chat prompts
    if built_with == prompt_format:
        return None
    return (
        f"datastore {folder} holds answers to {built_with} prompts, this eval asks {prompt_format} ones; "
        f"rebuild it with `build-index --prompt-format {prompt_format}` to match"
    )


def check_datastore(
    folder: Path,
    method: str,
    tokenizer_fingerprint: str,
    suite_label: str | None,
    suite_sha256: str | None,
    force: bool,
) -> dict:
    """Refuse a datastore that does not fit this evaluation; returns a short summary for config.json.

    Another method or another tokenizer is always refused (the drafts would be meaningless), and so is
    a store whose files do not match the sizes and checksums its manifest records. A corpus
    that holds the evaluated suite (eval questions leaking into the drafts) is refused unless `force`,
    and then the summary's "note" says so, for the report.
    """
    manifest = read_manifest(folder)
    built_for = manifest.get("method")
    if built_for != method:
        raise SpecbenchError(
            f"datastore {folder} was built with `build-index --method {built_for}`, but method '{method}' needs "
            f"one built with `--method {method}`"
        )
    tok = manifest.get("tokenizer") or {}
    if tok.get("fingerprint") != tokenizer_fingerprint:
        raise SpecbenchError(
            f"datastore {folder} was built with the tokenizer of '{tok.get('name')}' (fingerprint "
            f"{str(tok.get('fingerprint'))[:12]}), which differs from the model's ({tokenizer_fingerprint[:12]}); "
            "rebuild it with this --model"
        )
    from .base import VerifiedFiles

    files = VerifiedFiles(Path(folder), manifest)
    files.check()
    files.save(validated=False)  # eval checks once per suite, then the drafter opens it: hash once
    note = None
    leak = suite_overlap(manifest, suite_label, suite_sha256)
    if leak:
        if not force:
            raise SpecbenchError(
                f"datastore {folder} leaks the evaluation questions: {leak}; build it from another corpus "
                "(or pass --force-datastore, and the report will say so)"
            )
        note = f"datastore used despite a leak (--force-datastore): {leak}"
    corpus = manifest.get("corpus") or {}
    return {
        "path": str(folder),
        "method": built_for,
        "tokenizer": tok.get("name"),
        "corpus": corpus.get("description", corpus.get("spec")),
        "corpus_sha256": corpus.get("sha256"),
        "tokens": manifest.get("tokens"),
        "documents": manifest.get("documents"),
        "forced": note is not None,
        "note": note,
    }


def manifest_sha256(folder: Path) -> str:
    """sha256 of the datastore's manifest.json: its identity for `eval --resume`.

    The manifest records the corpus hash, the build parameters and the build time, so a rebuilt
    datastore (even from the same corpus) gets another id, and a run is never resumed on other drafts.
    """
    import hashlib

    return hashlib.sha256((Path(folder) / MANIFEST_FILE).read_bytes()).hexdigest()
