"""Prompt token ids for a conversation: the one place that decides what the model sees.

The engine (eval), the corpora (`generate:` answers, dresd's prompt + answer documents) and the
suites all use `build_prompt_ids`; it depends on nothing but the tokenizer, so none of them needs to
import another.
"""

from __future__ import annotations

from typing import Any

from .types import SpecbenchError

# chat: the tokenizer's chat template where it has one (plain otherwise); plain: the
# "Question: ...\nAnswer:\n" layout for every model, as the DReSD paper prompts (and builds its stores).
PROMPT_FORMATS = ("chat", "plain")


def check_prompt_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise SpecbenchError(
            f"unknown --prompt-format '{prompt_format}'; choose from: {', '.join(PROMPT_FORMATS)}"
        )


def build_prompt_ids(
    tokenizer: Any, turns: list[str] | tuple[str, ...], answers: list[str], prompt_format: str = "chat"
) -> list[int]:
    """Token ids of the prompt for the next turn: user turns[0], assistant answers[0], ..., user turns[-1].

    `chat` uses the tokenizer's chat template (with the generation prompt appended); a tokenizer
    without one, or `plain`, gets a "Question: ...\\nAnswer:\\n" layout.
    """
    if len(answers) != len(turns) - 1:
        raise ValueError(
            f"build_prompt_ids: {len(turns)} turns need {len(turns) - 1} answers, got {len(answers)}"
        )
    check_prompt_format(prompt_format)
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
        messages = []
        for i, turn in enumerate(turns):
            messages.append({"role": "user", "content": turn})
            if i < len(answers):
                messages.append({"role": "assistant", "content": answers[i]})
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:
        text = "".join(
            f"Question: {turn}\nAnswer:\n" + (f"{answers[i]}\n\n" if i < len(answers) else "")
            for i, turn in enumerate(turns)
        )
        out = tokenizer(text)
    return _flat_ids(out)


def _flat_ids(out: Any) -> list[int]:
    # transformers 4.x returns a list from apply_chat_template, 5.x a BatchEncoding; either may be
    # batched (one row) or a tensor.
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], (list, tuple)):
        if len(out) != 1:
            raise ValueError(f"expected one sequence of token ids, got a batch of {len(out)}")
        out = out[0]
    return [int(t) for t in out]
