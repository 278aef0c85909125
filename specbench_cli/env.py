"""What env.json records about a run: code version, libraries, machine, models and data.

Everything is best effort: a missing git, CUDA, /proc or optional library gives None, never an error,
because a run must not fail over its own bookkeeping.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__
from .files import sha256_file
from .types import LoadedModel

PACKAGE_DIR = Path(__file__).resolve().parent


def collect_env(
    models: list[LoadedModel], data_files: list[Path], seeds: dict, dtype: str, device: str
) -> dict[str, Any]:
    """The env.json dict. Call it when the run starts: `started` is taken here."""
    import torch

    return {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "specbench": __version__,
        "git": git_info(),
        "python": platform.python_version(),
        "packages": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "transformers": _version("transformers"),
            "numpy": _version("numpy"),
            "pandas": _version("pandas"),
            "faiss": _faiss_version(),
        },
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": _ram_bytes(),
        "gpu": gpu_info(),
        "device": device,
        "dtype": dtype,
        "seeds": dict(seeds),
        "models": [_model_info(m) for m in models],
        "data_files": {str(p): sha256_file(p) for p in data_files},
    }


def git_info() -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout specbench runs from (not the cwd); None outside git."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None
    # Untracked files don't change what ran; modified tracked files do.
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head, "dirty": bool(status) if status is not None else None}


def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(
            ["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def gpu_info() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "name": props.name,
                "memory_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return {
        "count": len(devices),
        "devices": devices,
        "driver": _nvidia_driver(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def _nvidia_driver() -> str | None:
    # torch does not expose the driver version; nvidia-smi does when it is installed.
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def _model_info(loaded: LoadedModel) -> dict[str, Any]:
    model = loaded.model
    return {
        "name": loaded.name,
        "source": loaded.source,
        "sha256": loaded.sha256,
        "dtype": loaded.dtype,
        "device": loaded.device,
        "params": sum(p.numel() for p in model.parameters()),  # tied weights are counted once
        "architecture": type(model).__name__,
        "vocab_size": loaded.vocab_size,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _faiss_version() -> str | None:
    # Read the installed distribution's metadata: importing faiss just to ask is slow.
    for dist in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu13", "faiss"):
        if version := _version(dist):
            return f"{version} ({dist})"
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


if __name__ == "__main__":  # handy check: python -m specbench_cli.env
    import json

    json.dump(collect_env([], [], {}, "float32", "cpu"), sys.stdout, indent=2)
    print()
