"""What every datastore kind shares: opening a folder and checking it, and the hooks a kind fills in to
be built by `build.py`.

Opening (`Datastore(path)`) always runs the same checks, in this order, before any array reaches a
compiled kernel:
1. manifest.json is readable, of this format version and built for this kind;
2. every store file the manifest lists exists with the recorded size (always: a stat is free) and
   the recorded sha256 (once: the verdict is cached in `.verified.json` in the store folder, keyed
   by the file's size and modification time, so the next open re-hashes only a changed file);
3. the kind's `load()` memory-maps its arrays, and its `validate()` checks their dtypes, shapes and
   value ranges (an index that would read out of bounds is refused here, not in a numba kernel),
   also once per verified state of the files.
Any failure is one SpecbenchError line that names the folder, the file and what is wrong, and says to
rebuild.

Building: a kind sets `kind`, `options_class` (its typed `--opt KEY=VALUE` options) and
`needs_model`, and implements `write()` (the store files for the token documents) and, when its
documents are not the corpus texts, `documents()`. Everything else (output-folder checks, the
tokenizer, the corpus, the manifest, checksums, the atomic publish) is `build.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..files import sha256_file, write_atomic
from ..types import LoadedModel, SpecbenchError
from .manifest import MANIFEST_FILE, read_manifest

VERIFIED_FILE = ".verified.json"  # cache of checksums already confirmed (hidden: not a store file)


def rebuild_hint(folder: Path) -> str:
    return f"rebuild it with `specbench build-index --force --out {folder}`"


def damaged(folder: Path, why: str) -> SpecbenchError:
    return SpecbenchError(f"datastore {folder} is damaged: {why}; {rebuild_hint(folder)}")


# ----------------------------------------------------------------------------------------------------
# Checksums of the store files


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """{file name: {"size", "sha256"}} of every store file in `folder` (the manifest's "files")."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(".")
    }


class VerifiedFiles:
    """Checks the files a manifest lists; remembers confirmed hashes in the store's .verified.json."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        records = manifest.get("files")
        if not (
            isinstance(records, dict)
            and records
            and all(isinstance(r, dict) and {"size", "sha256"} <= set(r) for r in records.values())
        ):
            raise SpecbenchError(
                f"datastore {self.folder} records no checksums of its files (built by an older specbench); "
                f"{rebuild_hint(self.folder)}"
            )
        self.records: dict[str, dict] = records
        self.cache = self._read_cache()
        self.state: dict[str, list] = {}  # name -> [size, mtime_ns, sha256] as found now

    def _read_cache(self) -> dict:
        try:
            cache = json.loads((self.folder / VERIFIED_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    def check(self) -> None:
        """Sizes always; a hash only when this (size, mtime) of the file was not confirmed before."""
        confirmed = self.cache.get("files") if isinstance(self.cache.get("files"), dict) else {}
        for name, rec in self.records.items():
            path = self.folder / name
            if "/" in name or name.startswith(".") or name == MANIFEST_FILE:
                raise damaged(self.folder, f"the manifest lists an invalid file name '{name}'")
            try:
                st = path.stat()
            except OSError:
                raise damaged(self.folder, f"{name} is missing") from None
            if st.st_size != rec["size"]:
                raise damaged(
                    self.folder, f"{name} has {st.st_size:,} bytes, the manifest says {rec['size']:,}"
                )
            key = [st.st_size, st.st_mtime_ns, rec["sha256"]]
            if confirmed.get(name) != key and sha256_file(path) != rec["sha256"]:
                raise damaged(self.folder, f"{name} does not match the sha256 the manifest records")
            self.state[name] = key

    @property
    def validated(self) -> bool:
        """True when the arrays were already validated in exactly this state of the files."""
        return self.cache.get("files") == self.state and self.cache.get("validated") is True

    def save(self, validated: bool) -> None:
        """Remember the confirmed hashes (and whether the arrays passed their checks in this state);
        a read-only store just gets hashed again next time."""
        record = {"files": self.state, "validated": validated or self.validated}
        if record == self.cache:
            return
        try:
            write_atomic(self.folder / VERIFIED_FILE, json.dumps(record))
        except OSError:
            pass


def join_documents(
    docs: Iterable[np.ndarray | list[int]],
    dtype: Any,
    separator: int,
    max_id: int,
    max_len: int | None = None,
) -> tuple[np.ndarray, int]:
    """One `dtype` stream with `separator` after every non-empty document; returns (stream, documents).

    The separator is an id no document holds, so a match never spans two documents and a
    continuation stops where its document ends. Ids must lie in [0, max_id].
    """
    parts: list[np.ndarray] = []
    sep = np.array([separator], dtype=dtype)
    n_docs = 0
    for doc in docs:
        arr = np.asarray(doc)
        if arr.size == 0:
            continue
        if arr.min() < 0 or arr.max() > max_id:
            raise SpecbenchError(f"token ids must lie in [0, {max_id}]; got {arr.min()}..{arr.max()}")
        parts += [arr.astype(dtype, copy=False), sep]
        n_docs += 1
    if not parts:
        raise SpecbenchError("the corpus gave no tokens: nothing to index")
    total = sum(len(p) for p in parts)
    if max_len is not None and total > max_len:
        raise SpecbenchError(f"the corpus has {total:,} tokens; this datastore holds at most {max_len:,}")
    return np.concatenate(parts), n_docs


def document_groups(docs: Iterable[np.ndarray | list[int]], chunk_tokens: int) -> Iterator[list[np.ndarray]]:
    """Consecutive non-empty documents in groups of at most `chunk_tokens` tokens (separators counted).

    A document never spans two groups (a match must not cross a chunk or shard boundary unseen), so
    one longer than `chunk_tokens` makes a group of its own. Only one group is held at a time.
    """
    group: list[np.ndarray] = []
    size = 0
    for doc in docs:
        arr = np.asarray(doc)
        if arr.size == 0:
            continue
        if group and size + arr.size + 1 > chunk_tokens:
            yield group
            group, size = [], 0
        group.append(arr)
        size += arr.size + 1
    if group:
        yield group


# ----------------------------------------------------------------------------------------------------
# The base class


@dataclass
class BuildInput:
    """What `build.py` hands a kind's `write()`."""

    docs: Iterable[np.ndarray]  # token documents (1-D integer arrays)
    options: Any  # the kind's options_class instance
    loaded: LoadedModel | None = None  # the target, when the kind needs_model
    batch_size: int = 64  # packed rows of max_length tokens per forward (dresd keys)
    console: Any = None  # rich Console for progress, or None


class Datastore:
    """An opened, checked datastore folder. Subclasses fill in the class attributes and the hooks."""

    kind: ClassVar[str] = "base"  # the `build-index --method` name, the drafter's datastore_kind
    options_class: ClassVar[type]  # dataclass of `options.option` fields, parsed from `--opt KEY=VALUE`
    needs_model: ClassVar[bool] = False  # build runs the model (not only its tokenizer)

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        built_for = self.manifest.get("method")
        if built_for != self.kind:
            raise SpecbenchError(
                f"datastore {self.path} was built for method '{built_for}', not '{self.kind}'; "
                f"build one with `specbench build-index --method {self.kind}`"
            )
        files = VerifiedFiles(self.path, self.manifest)
        files.check()
        try:
            self.load()
        except Exception as e:  # noqa: BLE001 - numpy, safetensors and faiss each raise their own types
            # Checksums matched, so the files are the ones the build wrote; an unreadable one means
            # the manifest itself was rewritten over other files.
            raise damaged(
                self.path, f"its files cannot be read ({str(e).splitlines()[0] if str(e) else e!r})"
            ) from None
        if not files.validated:
            self.validate()
        files.save(validated=True)

    # -- opening ------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read (memory-map) the store files into attributes."""
        raise NotImplementedError

    def validate(self) -> None:
        """Refuse arrays whose dtype, shape or values the search code cannot take (call self.refuse)."""

    def refuse(self, why: str) -> SpecbenchError:
        return damaged(self.path, why)

    def expect_array(self, name: str, arr: np.ndarray, dtypes: tuple, ndim: int, min_rows: int = 1) -> None:
        """dtype, rank and a minimum length of one array, else a one-line refusal."""
        if arr.dtype not in [np.dtype(d) for d in dtypes]:
            allowed = " or ".join(np.dtype(d).name for d in dtypes)
            raise self.refuse(f"{name} has dtype {arr.dtype}, expected {allowed}")
        if arr.ndim != ndim:
            raise self.refuse(f"{name} has {arr.ndim} dimension(s), expected {ndim}")
        if arr.shape[0] < min_rows:
            raise self.refuse(f"{name} is empty")

    def expect_range(self, name: str, arr: np.ndarray, low: int, high: int) -> None:
        """Every value of `arr` in [low, high), checked in chunks (arrays may be memory-mapped GBs)."""
        flat = arr.reshape(-1)
        for start in range(0, flat.shape[0], 1 << 24):
            part = np.asarray(flat[start : start + (1 << 24)])
            lo, hi = int(part.min()), int(part.max())
            if lo < low or hi >= high:
                raise self.refuse(f"{name} holds values {lo}..{hi}, outside [{low}, {high})")

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def check_target(cls, loaded: LoadedModel, options: Any) -> None:
        """Refuse options that do not fit the target, before a generate: corpus costs minutes."""

    @classmethod
    def documents(cls, source, tokenizer, console) -> tuple[Iterator[np.ndarray] | list[np.ndarray], str]:
        """Token documents of a corpus source and how they were formed (for the manifest)."""
        from .corpus import tokenize_documents

        docs = tokenize_documents(source.texts(), tokenizer, total=source.documents, console=console)
        return docs, "corpus text"

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        """Write the store files into `folder`; return the manifest fields this kind adds
        (at least "tokens" and "documents"; "build" is merged into the manifest's build section)."""
        raise NotImplementedError

    @classmethod
    def summary(cls, manifest: dict) -> str:
        """One line printed after a build."""
        build = manifest["build"]
        return (
            f"{cls.kind} datastore: {manifest['tokens']:,} tokens in {manifest['documents']:,} documents, "
            f"{build['bytes_on_disk'] / 2**20:,.1f} MiB, built in {build['seconds']:.1f} s, "
            f"peak memory {build['peak_rss_mb']:,.0f} MiB"
        )
