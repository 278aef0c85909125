"""Corpus sources for `build-index --corpus SPEC`, shared by every datastore method.

SPEC is one of:
    FILE.jsonl | FILE.json    records; --text-key K (repeatable) picks the fields joined into a document
    FILE | FOLDER             a text file is one document; a folder gives one document per file (--glob)
    stdlib                    the running interpreter's standard-library .py sources
    generate:SUITE_OR_FILE    the target model's own greedy answers to a suite's questions or to the
                              prompts of a JSON/JSONL file, cached as JSONL and reused on the next build;
                              generate:A,B,... joins several such sources (corpus_mix.py)

`generate:` sources are built in generate.py. Each source knows its files and their sha256 (written to the manifest, so `eval` can refuse a datastore
that contains the suite it evaluates) and yields documents as text. `tokenize_documents` turns them
into uint32 token arrays with a progress bar in tokens/s.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import sha256_file
from ..types import SpecbenchError

# Keys tried, in order, when no --text-key is given.
DEFAULT_TEXT_KEYS = ("text", "content", "output", "response", "answer")
DEFAULT_PROMPT_KEYS = ("turns", "prompt", "question", "instruction")
# Standard-library folders that are not library code (tests, fixtures) or not the stdlib at all.
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass
class CorpusSource:
    spec: str  # as the user gave it
    kind: str  # "json" | "text" | "stdlib" | "generate"
    description: str
    sha256: str  # of the one file, or of the sorted (name, sha256) list of several
    files: list[dict[str, str]]  # [{"name", "sha256"}] for the manifest's leak check
    documents: int | None  # known before reading, when cheap
    read_texts: Callable[[], Iterator[str]] = field(repr=False)
    suite: str | None = None  # generate: the suite (or prompt file) the model answered
    suite_sha256: str | None = None  # generate: sha256 of that suite's question file
    answers_file: Path | None = None  # generate: the JSONL of answers
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)  # generate: prompts + answers
    prompt_format: str = "chat"  # generate: how the prompts were laid out (prompts.PROMPT_FORMATS)

    def texts(self) -> Iterator[str]:
        return self.read_texts()

    def __iter__(self) -> Iterator[str]:
        return self.read_texts()

    def to_manifest(self) -> dict:
        out: dict[str, Any] = {
            "spec": self.spec,
            "kind": self.kind,
            "description": self.description,
            "sha256": self.sha256,
            "files": self.files[:1000],  # a folder of many files keeps the first 1000 names
        }
        if self.suite is not None:
            out |= {"suite": self.suite, "suite_sha256": self.suite_sha256}
        if self.answers_file is not None:
            out["answers_file"] = str(self.answers_file)
        if self.kind == "generate":
            out["prompt_format"] = self.prompt_format
        return out


def iter_corpus(spec: str, options: dict, loaded=None, console=None) -> CorpusSource:
    """Resolve SPEC into a CorpusSource (see the module docstring).

    `options` are build-index's: text_key (list), glob, max_docs, and for `generate:` batch_size,
    max_new_tokens, answers_file (reuse or write exactly this JSONL) and generated_dir (the cache
    folder otherwise). `loaded` is the target LoadedModel, needed only by `generate:`.
    """
    keys = list(options.get("text_key") or [])
    max_docs = options.get("max_docs")
    if max_docs is not None and max_docs < 1:
        raise SpecbenchError(f"--max-docs must be at least 1, got {max_docs}")
    if spec.startswith("generate:"):
        if loaded is None:
            raise SpecbenchError("a generate: corpus needs the target model loaded (--model)")
        from .corpus_mix import join_generated, split_targets
        from .generate import generated_corpus

        targets = split_targets(spec[len("generate:") :])
        if len(targets) == 1:
            return generated_corpus(spec, targets[0], options, loaded, console)
        parts = [generated_corpus(f"generate:{t}", t, options, loaded, console) for t in targets]
        return join_generated(spec, parts)
    if spec == "stdlib":
        return stdlib_corpus(max_docs)
    path = Path(spec).expanduser()
    if not path.exists():
        raise SpecbenchError(
            f"corpus '{spec}' not found; give a .jsonl/.json/text file, a folder, 'stdlib' or 'generate:SUITE_OR_FILE'"
        )
    if path.is_dir():
        return folder_corpus(spec, path, options.get("glob") or "**/*", max_docs)
    if path.suffix.lower() in (".jsonl", ".json"):
        return json_corpus(spec, path, keys, max_docs)
    return folder_corpus(spec, path, None, max_docs)


# ----------------------------------------------------------------------------------------------------
# Hashes


def combined_sha256(files: list[dict[str, str]]) -> str:
    """One hash for a list of files: over their sorted "name<TAB>sha256" lines."""
    lines = sorted(f"{f['name']}\t{f['sha256']}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# JSON / JSONL records


def read_records(path: Path) -> list[Any]:
    """Records of a .jsonl file (one JSON value a line) or a .json file (a list, or {"data": [...]})."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecbenchError(f"cannot read {path}: {e}") from e
    try:
        if path.suffix.lower() == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecbenchError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise SpecbenchError(f"{path} holds no list of records")
    return data


def pick_keys(
    records: list[Any], keys: list[str], defaults: tuple[str, ...], path: Path, what: str
) -> list[str]:
    """The keys to join: the user's (each must occur in some record) or the first default present."""
    if records and not isinstance(records[0], dict):
        return []  # records are plain strings
    seen: set[str] = set()
    for r in records[:100]:
        seen |= set(r) if isinstance(r, dict) else set()
    if keys:
        missing = [k for k in keys if not any(isinstance(r, dict) and k in r for r in records)]
        if missing:
            raise SpecbenchError(
                f"--text-key {', '.join(missing)} not found in {path}; its records have keys: {', '.join(sorted(seen))}"
            )
        return keys
    for k in defaults:
        if k in seen:
            # Alpaca-style records: "input" (the code to fix, the text to work on) belongs to the
            # instruction, as the code-alpaca suite joins them.
            return [k, "input"] if k == "instruction" and "input" in seen else [k]
    raise SpecbenchError(
        f"{path}: say which {what} field(s) to use with --text-key; records have keys: {', '.join(sorted(seen))}"
    )


def record_text(record: Any, keys: list[str]) -> str:
    """The record's fields joined by newlines (lists, like "turns", joined too); empty fields skipped."""
    if not keys:
        return record if isinstance(record, str) else ""
    parts = []
    for k in keys:
        v = record.get(k) if isinstance(record, dict) else None
        if isinstance(v, (list, tuple)):
            parts.extend(str(x) for x in v if str(x).strip())
        elif v is not None and str(v).strip():
            parts.append(str(v))
    return "\n".join(parts)


def json_corpus(spec: str, path: Path, keys: list[str], max_docs: int | None) -> CorpusSource:
    records = read_records(path)[:max_docs]
    keys = pick_keys(records, keys, DEFAULT_TEXT_KEYS, path, "text")
    sha = sha256_file(path)
    return CorpusSource(
        spec=spec,
        kind="json",
        description=f"{path.name}: {len(records)} records, text = {'+'.join(keys) or 'the record'}",
        sha256=sha,
        files=[{"name": str(path), "sha256": sha}],
        documents=len(records),
        read_texts=lambda: (record_text(r, keys) for r in records),
    )


# ----------------------------------------------------------------------------------------------------
# Text files, folders and the standard library


def _read_text_files(paths: list[Path]) -> Iterator[str]:
    for p in paths:
        try:
            yield p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary or another encoding: not text we can tokenize faithfully


def _files_source(spec: str, kind: str, root: Path, paths: list[Path], description: str) -> CorpusSource:
    files = [
        {"name": str(p.relative_to(root)) if p != root else p.name, "sha256": sha256_file(p)} for p in paths
    ]
    return CorpusSource(
        spec=spec,
        kind=kind,
        description=description,
        sha256=files[0]["sha256"] if len(files) == 1 else combined_sha256(files),
        files=files,
        documents=len(paths),
        read_texts=lambda: _read_text_files(paths),
    )


def folder_corpus(spec: str, path: Path, glob: str | None, max_docs: int | None) -> CorpusSource:
    if glob is None:  # a single text file
        return _files_source(spec, "text", path, [path], f"text file {path.name}")
    paths = sorted(
        p
        for p in path.glob(glob)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )[:max_docs]
    if not paths:
        raise SpecbenchError(f"no files match --glob '{glob}' under {path}")
    return _files_source(spec, "text", path, paths, f"folder {path.name}: {len(paths)} files matching {glob}")


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's .py files, without site-packages and test suites, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in STDLIB_SKIP_DIRS]  # prune: site-packages is large
        paths.extend(Path(folder) / f for f in files if f.endswith(".py"))
    return root, sorted(paths)


def stdlib_corpus(max_docs: int | None) -> CorpusSource:
    root, paths = stdlib_files()
    paths = paths[:max_docs]
    if not paths:
        raise SpecbenchError(f"no standard-library sources found under {root}")
    version = ".".join(map(str, sys.version_info[:3]))
    return _files_source(
        "stdlib",
        "stdlib",
        root,
        paths,
        f"Python {version} standard library: {len(paths)} .py files under {root}",
    )


# ----------------------------------------------------------------------------------------------------
# Tokenizing


def tokenize_documents(
    texts: Iterable[str],
    tokenizer,
    total: int | None = None,
    batch_size: int = 64,
    console=None,
    label: str = "tokenizing",
) -> Iterator[np.ndarray]:
    """Token ids (uint32, no special tokens) of each non-empty document, with a docs + tokens/s progress bar."""
    from ..progress import progress_bar

    progress = progress_bar(
        label, "docs  {task.fields[tokens]:,} tokens  {task.fields[rate]}", console, remaining=False
    )
    with progress:
        task = progress.add_task(label, total=total, tokens=0, rate="")
        t0, n_tokens, n_read = time.perf_counter(), 0, 0
        batch: list[str] = []

        def flush() -> Iterator[np.ndarray]:
            nonlocal n_tokens
            if batch:
                # verbose=False: long files exceed model_max_length, which only matters for a forward pass.
                for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                    arr = np.asarray(ids, dtype=np.uint32)
                    n_tokens += arr.size
                    yield arr
                batch.clear()
            rate = n_tokens / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, completed=n_read, tokens=n_tokens, rate=f"{rate:,.0f} tok/s")

        for text in texts:
            n_read += 1
            if text:
                batch.append(text)
            if len(batch) >= batch_size:
                yield from flush()
        yield from flush()
