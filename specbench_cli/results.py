"""The run folder on disk: crash-safe answer files and atomic writes.

Usage: `paths = RunPaths(Path("results/run1")); append_answer(paths.answers_file("mt-bench", "pld"), rec)`.

Layout of `results/RUN/` (docs/results.md describes every field):
    .lock (held by the eval that writes the folder), config.json, env.json,
    answers/<suite_label>/<method>.jsonl, scores/<suite_label>/<method>.jsonl, summary.json, summary.md, summary.csv, summary.tex, plots/*.png
No torch or pandas here: `eval --resume` reads these files before any model loads.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_atomic
from .types import SpecbenchError


def append_answer(path: Path, record: dict) -> None:
    """Append one answer record as a single JSON line and fsync it.

    The whole newline-terminated line goes out in one `os.write` on an O_APPEND descriptor, so a killed
    run leaves at worst one partial trailing line, which `read_answers` ignores. If the file already
    ends in such a fragment (an earlier run died mid-write) it is repaired first, so the new line
    never gets glued onto it.
    """
    # NaN is allowed here (Python reads it back): a long run must not die over one odd timing.
    line = (json.dumps(record) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not _ends_with_newline(path):
        read_answers(path, repair=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        # A regular file takes the whole buffer unless the disk is full; finish the line if not.
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class AnswerLine:
    """One kept answer record and its 1-based line number in the file (for error messages)."""

    line: int
    record: dict


def answer_key(record: dict) -> tuple[Any, int]:
    """What identifies one answer in a file: its question and its repeat (`eval --repeats`; 0 if absent)."""
    return record["question_id"], int(record.get("repeat") or 0)


def read_answers(path: Path, repair: bool = False) -> list[dict]:
    """Read an answer file, one record per (question_id, repeat) (the last line for a key wins).

    A trailing line that does not parse is what a killed writer leaves behind: it is ignored, and
    with `repair=True` cut off the file (atomically, by rewriting the good prefix). A bad line
    anywhere before the last one means the file was damaged some other way: SpecbenchError.
    """
    return [kept.record for kept in read_answer_lines(path, repair)]


def read_answer_lines(path: Path, repair: bool = False) -> list[AnswerLine]:
    """`read_answers`, with the line number each kept record came from."""
    data = Path(path).read_bytes()
    raw_lines = data.split(b"\n")
    # Index of the last non-blank line: the only one allowed to be a partial write.
    last = max((i for i, raw in enumerate(raw_lines) if raw.strip()), default=-1)
    by_id: dict[Any, AnswerLine] = {}
    good_end = 0  # byte offset just past the last good line
    offset = 0
    for i, raw in enumerate(raw_lines):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        record = _parse_record(raw)
        if record is None:
            if i == last:
                good_end = start
                break
            raise SpecbenchError(
                f"{path}: line {i + 1} is not a valid answer record (JSON object with a question_id); "
                "fix or delete that line"
            )
        key = answer_key(record)
        by_id.pop(key, None)  # re-insert, so the order follows the kept lines
        by_id[key] = AnswerLine(i + 1, record)
        good_end = min(offset, len(data))
    if repair:
        fixed = data[:good_end]
        if fixed and not fixed.endswith(b"\n"):
            fixed += b"\n"  # a complete last record that only lost its newline
        if fixed != data:
            write_bytes_atomic(Path(path), fixed)
    return list(by_id.values())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data)  # files.py: temp file, fsync, rename


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Pretty JSON, written atomically. NaN/inf are refused (strict JSON): turn them into None first."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_to_jsonable)
    write_text_atomic(path, text + "\n")


@dataclass
class RunPaths:
    """Every path of one run folder, so no other module spells out file names."""

    root: Path
    lock: Path = field(init=False)
    config: Path = field(init=False)
    env: Path = field(init=False)
    answers_dir: Path = field(init=False)
    scores_dir: Path = field(init=False)
    summary_json: Path = field(init=False)
    summary_md: Path = field(init=False)
    summary_csv: Path = field(init=False)
    summary_tex: Path = field(init=False)
    plots_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.lock = self.root / ".lock"
        self.config = self.root / "config.json"
        self.env = self.root / "env.json"
        self.answers_dir = self.root / "answers"
        self.scores_dir = self.root / "scores"  # sandboxed task scores (scoring/scores.py)
        self.summary_json = self.root / "summary.json"
        self.summary_md = self.root / "summary.md"
        self.summary_csv = self.root / "summary.csv"
        self.summary_tex = self.root / "summary.tex"
        self.plots_dir = self.root / "plots"

    def answers_file(self, suite_label: str, method: str) -> Path:
        return (
            self.answers_dir
            / _check_name("suite label", suite_label)
            / f"{_check_name('method', method)}.jsonl"
        )

    def scores_file(self, suite_label: str, method: str) -> Path:
        return self.scores_dir / self.answers_file(suite_label, method).relative_to(self.answers_dir)

    def iter_answer_files(self) -> Iterator[tuple[str, str, Path]]:
        """(suite_label, method, path) for every answer file, sorted; temp and hidden files skipped."""
        if not self.answers_dir.is_dir():
            return
        for path in sorted(self.answers_dir.glob("*/*.jsonl")):
            if path.is_file() and not path.name.startswith(".") and not path.parent.name.startswith("."):
                yield path.parent.name, path.stem, path


@contextmanager
def run_folder_lock(root: Path, resume: bool) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder `root` for the whole `with` block.

    Two evals appending to one folder would interleave answers and overwrite each other's config, so a
    second one is refused (one line, exit 2) while the first holds the lock. A missing folder is
    created here, atomically, so two new runs cannot both claim it; an existing one is only entered
    with `resume`. If the block fails while a folder created here holds nothing but the lock file, the
    folder is removed again: a run that dies before its first write leaves nothing behind. The lock
    file stays in a kept folder (deleting it would let a third process lock a fresh inode while a
    second one still holds the old one).
    """
    root = Path(root)
    lock_path = RunPaths(root).lock
    created = _create_folder(root, resume)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise SpecbenchError(
                f"run folder {root} is in use by another specbench eval{_lock_holder(lock_path)}; "
                "wait for it to finish or choose another --out"
            ) from None
        # Who holds it, for the message above (informational only: the flock is the lock).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield root
        except BaseException:
            if created and _holds_only(root, lock_path.name):
                shutil.rmtree(root, ignore_errors=True)
            raise
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _create_folder(root: Path, resume: bool) -> bool:
    """mkdir `root`; True when this call created it. An existing folder needs `resume`."""
    try:
        root.mkdir(parents=True)
        return True
    except FileExistsError:
        if not resume:
            raise SpecbenchError(
                f"run folder {root} already exists; pass --resume to continue it or choose another --out"
            ) from None
        if not root.is_dir():
            raise SpecbenchError(f"--out {root} exists and is not a folder") from None
        return False
    except OSError as e:  # a read-only place, a file on the way, a full disk
        raise SpecbenchError(f"--out {root}: cannot create the run folder ({e.strerror})") from None


def _lock_holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _holds_only(root: Path, name: str) -> bool:
    try:
        return [p.name for p in root.iterdir()] == [name]
    except OSError:
        return False


def _parse_record(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(record, dict) or "question_id" not in record:
        return None
    qid = record["question_id"]
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        return None  # ids key dicts and pair answers across methods: a list or null cannot
    repeat = record.get("repeat", 0)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 0:
        return None
    return record


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True  # empty: nothing to glue onto
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _check_name(kind: str, name: str) -> str:
    # Labels become folder and file names: refuse anything that could leave the run folder.
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise SpecbenchError(
            f"invalid {kind} '{name}' for a results file name; use letters, digits, '-', '_', ':' or '#'"
        )
    return name


def _to_jsonable(obj: Any) -> Any:
    # json.dumps calls this only for types it cannot write itself.
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
