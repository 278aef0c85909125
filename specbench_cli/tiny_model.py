"""`tiny-random` and `tiny-random-draft`: small random Llamas built in code from fixed seeds, with a
byte-level tokenizer (every byte is a token). Instant, no files, deterministic: the models of the tests.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .model_aliases import TINY_MODELS

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


def build_tiny(alias: str, attn_implementation: str) -> tuple[Any, Any, str, str]:
    """(float32 CPU model, tokenizer, source description, sha256 of the weights) of a tiny alias."""
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
    return model, tokenizer, f"built-in: seed {spec.seed}, {spec.layers} layers", digest.hexdigest()
