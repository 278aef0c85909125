"""The one build driver behind `specbench build-index --method KIND`.

    check the output folder -> parse the kind's --opt options -> tokenizer (or model) -> corpus ->
    the kind's documents -> the kind's write() into a hidden .building folder -> manifest with the
    size and sha256 of every file -> rename into place

Checks that cost nothing come before any model loads. The build happens in a hidden sibling
`.<name>.building`, renamed over the target at the end, so an interrupted build never leaves a half
datastore; a leftover from a killed build of the same target is removed by the next one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..files import peak_rss_mb
from ..types import LoadedModel, SpecbenchError
from .base import BuildInput, Datastore, file_records
from .manifest import MANIFEST_FILE, new_manifest, write_manifest


def datastore_class(kind: str) -> type[Datastore]:
    from ..registry import DATASTORES

    return DATASTORES.get(kind)


def parse_opts(items: list[str]) -> dict[str, str]:
    """`--opt dim=32 --opt index=Flat` -> {"dim": "32", "index": "Flat"} (typed by the kind's options)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecbenchError(f"bad --opt '{item}'; expected KEY=VALUE, e.g. --opt dim=32")
        out[key.strip()] = value
    return out


def kind_options(store_class: type[Datastore], raw: dict) -> Any:
    from ..options import parse_options

    return parse_options(store_class.options_class, dict(raw), owner=f"{store_class.kind} datastore")


def check_out_dir(out_dir: Path, force: bool) -> Path:
    """Refuse an output folder that cannot safely become (or be replaced by) a datastore."""
    out = Path(out_dir)
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise SpecbenchError(
            f"--out {out_dir} is the current folder or one above it; give a new folder for the datastore"
        )
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise SpecbenchError(f"--out {out_dir} lies under {parent}, which is a file")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise SpecbenchError(f"--out {out_dir} is a file, not a folder")
        if not force:
            raise SpecbenchError(f"output folder {out_dir} already exists; pass --force to overwrite it")
        if not (out / MANIFEST_FILE).is_file():
            raise SpecbenchError(
                f"--force would delete {out_dir}, which is not a datastore (no {MANIFEST_FILE}); "
                "remove it yourself or choose another --out"
            )
    return out


@contextmanager
def staged_build(out_dir: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to build in. On success it replaces `out_dir`; on any failure
    (Ctrl-C included) it is removed, so an interrupted build never leaves a half-written datastore."""
    tmp = out_dir.with_name(f".{out_dir.name}.building")
    old = out_dir.with_name(f".{out_dir.name}.replaced")
    for leftover in (tmp, old):  # left by an earlier build that was killed
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():  # the old store stays whole until the new one is in place
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def publish(
    store_class: type[Datastore], build: BuildInput, out_dir: Path, manifest: dict, force: bool = False
) -> dict:
    """Write a complete datastore folder atomically; returns its manifest."""
    out_dir = check_out_dir(out_dir, force)
    t0 = time.perf_counter()
    with staged_build(out_dir) as tmp:
        fields = store_class.write(build, tmp)
        full = dict(manifest) | {k: v for k, v in fields.items() if k != "build"}
        full["method"] = store_class.kind
        full["build"] = dict(manifest.get("build") or {}) | dict(fields.get("build") or {})
        full["build"] |= {
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "bytes_on_disk": sum(f.stat().st_size for f in tmp.iterdir()),
        }
        full["files"] = file_records(tmp)
        write_manifest(tmp, full)
    return full


def tokenizer_record(name: str, tokenizer) -> dict:
    from ..models import tokenizer_fingerprint

    return {"name": name, "fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer)}


def build_index(
    kind: str, model_spec: str, corpus_spec: str, out_dir: Path, options: dict, console=None
) -> dict:
    """`build-index`: build a `kind` datastore from `corpus_spec` with `model_spec`'s tokenizer (or model).

    `options` are build-index's general settings (text_key, glob, max_docs, force, batch_size,
    max_new_tokens, temperature, seed, dtype, device, answers_file) and "opt", the kind's own KEY=VALUE options.
    """
    from rich.console import Console

    from ..models import load_model, load_tokenizer
    from .corpus import iter_corpus

    store_class = datastore_class(kind)
    opts = kind_options(store_class, options.get("opt") or {})
    out_dir = check_out_dir(out_dir, bool(options.get("force")))  # before any model loads
    console = console or Console(stderr=True)
    settings = dict(options)
    loaded = None
    if store_class.needs_model or corpus_spec.startswith("generate:"):
        loaded = load_model(model_spec, settings.get("dtype") or "float32", settings.get("device") or "cpu")
        store_class.check_target(loaded, opts)
        tokenizer = loaded.tokenizer
    else:
        tokenizer = load_tokenizer(model_spec)
    settings.setdefault("generated_dir", out_dir.parent / "generated")
    source = iter_corpus(corpus_spec, settings, loaded=loaded, console=console)
    docs, formed = store_class.documents(source, tokenizer, console)
    manifest = new_manifest(
        method=kind,
        tokenizer=tokenizer_record(model_spec, tokenizer),
        corpus=source.to_manifest() | {"documents_formed_from": formed},
        params=asdict(opts) | {"max_docs": settings.get("max_docs")},
    )
    build = BuildInput(docs, opts, loaded, int(settings.get("batch_size") or 64), console)
    full = publish(store_class, build, out_dir, manifest, force=bool(settings.get("force")))
    console.print(f"{out_dir}: {store_class.summary(full)}", highlight=False)
    return full


def build_from_token_docs(
    kind: str,
    docs: Iterable[np.ndarray] | Iterable[list[int]],
    out_dir: Path,
    tokenizer_name: str | None = None,
    fingerprint: str | None = None,
    loaded: LoadedModel | None = None,
    corpus: dict | None = None,
    force: bool = False,
    **options: Any,
) -> Path:
    """Build a datastore straight from token lists (tests, benchmarks): no text, no corpus.

    The manifest records `loaded`'s tokenizer when a model is given, else (tokenizer_name, fingerprint).
    """
    store_class = datastore_class(kind)
    opts = kind_options(store_class, options)
    if loaded is not None:
        store_class.check_target(loaded, opts)
        tokenizer = tokenizer_record(loaded.name, loaded.tokenizer)
    else:
        tokenizer = {"name": tokenizer_name, "fingerprint": fingerprint}
    manifest = new_manifest(
        method=kind,
        tokenizer=tokenizer,
        corpus=corpus
        or {"spec": "token-docs", "kind": "tokens", "description": "token documents given in code"},
        params=asdict(opts),
    )
    docs = [np.asarray(d, dtype=np.int64) for d in docs]
    publish(store_class, BuildInput(docs, opts, loaded), Path(out_dir), manifest, force=force)
    return Path(out_dir)
