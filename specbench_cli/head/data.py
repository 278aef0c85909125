"""Training data for an EAGLE head: the target's own greedy answers, with its features from the same pass.

Each prompt (the first turn of a record, in the chat template eval uses) is answered greedily by the
target in left-padded batches (`generation.generate_batch`); the batch's forwards also return the
target's final hidden state at every position they fed. A sequence is then

    tokens   t_0 .. t_{L-1}      prompt + answer (EOS included when the answer ended with it)
    features f_0 .. f_{L-2}      f_i = target's last-layer feature at position i (after its final norm)
    prompt   P                   tokens of the prompt

Batches are written as shards (`data/shard-NNNNN.pt`) as they finish, so an interrupted run resumes
after the last complete shard; the batch order is fixed by the prompt list, so a resumed run makes the
same batches. `data_sha256` hashes every sequence's tokens and the generation settings: two runs
trained on the same answers share it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..types import LoadedModel, SpecbenchError


@dataclass
class Sequence:
    tokens: list[int]
    prompt_len: int
    features: torch.Tensor  # (len(tokens) - 1, H), on the CPU


@dataclass
class PromptSet:
    """Prompts and where they came from (the manifest's `corpus`, which eval's overlap check reads)."""

    ids: list[list[int]]
    corpus: dict


def evaluation_suite_of(source: str, sha256: str | None = None) -> str | None:
    """The built-in evaluation suite that `source` names (`spec-bench`, `humaneval#...`, ...) or whose
    pinned question file it is (by sha256), else None. A head trained on one would be evaluated on its
    own training prompts wherever that suite runs."""
    from .. import suite_files
    from ..registry import SUITES

    name = source.rpartition("#")[0] if "#" in source else source
    name = name.partition(":")[0]
    if not Path(source).expanduser().is_file() and name in SUITES.names() and name != "jsonl":
        return name
    pinned = {
        suite_files.SPEC_BENCH_SHA256: "spec-bench",
        suite_files.CODE_ALPACA_SHA256: "code-alpaca",
        suite_files.MT_BENCH_FILE.sha256: "mt-bench",
        suite_files.HUMANEVAL_FILE.sha256: "humaneval",
    }
    return pinned.get(sha256) if sha256 else None


def refuse_evaluation_suite(source: str, sha256: str | None = None) -> None:
    suite = evaluation_suite_of(source, sha256)
    if suite:
        raise SpecbenchError(
            f"--prompts {source} is the evaluation suite '{suite}'; train the head on other prompts "
            "(e.g. ../shared/data/gsm8k/train.jsonl, code_alpaca/new_codealpaca.json)"
        )


def check_prompt_sources(sources: list[str]) -> None:
    """Refuse a built-in evaluation suite among `sources`, by name or by file, before any model loads."""
    from ..files import sha256_file

    for source in sources:
        path = Path(source).expanduser()
        refuse_evaluation_suite(source, sha256_file(path) if path.is_file() else None)


def load_prompt_set(sources: list[str], loaded: LoadedModel, max_prompts: int | None) -> PromptSet:
    """First turns of each prompt file (JSON/JSONL) or `jsonl:PATH` suite, at most `max_prompts` from
    each, as chat-template prompt ids. A built-in evaluation suite (by name or by its pinned file) is
    refused; every source's sha256 goes into the manifest (eval's overlap check for any other file)."""
    from ..datastores.generate import load_prompts
    from ..prompts import build_prompt_ids

    check_prompt_sources(sources)
    ids: list[list[int]] = []
    files, names = [], []
    for source in sources:
        suite, description, sha, prompts = load_prompts(source, [], max_prompts)
        refuse_evaluation_suite(source, sha)
        if not prompts:
            raise SpecbenchError(f"--prompts {source} gave no prompts")
        ids += [build_prompt_ids(loaded.tokenizer, turns[:1], []) for _, turns in prompts]
        files.append({"name": description, "sha256": sha, "prompts": len(prompts)})
        names.append(suite)
    corpus = {
        "spec": " + ".join(sources),
        "description": f"{loaded.name}'s greedy answers to {len(ids)} prompts of {' + '.join(f['name'] for f in files)}",
        "suite": names[0] if len(names) == 1 else None,
        "sha256": files[0]["sha256"]
        if len(files) == 1
        else hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest(),
        "files": files,
        "documents": len(ids),
    }
    return PromptSet(ids, corpus)


def make_sequences(
    loaded: LoadedModel,
    prompts: list[list[int]],
    folder: Path,
    batch_size: int,
    max_new_tokens: int,
    max_len: int,
    log=print,
) -> list[Sequence]:
    """Answer `prompts` (resuming from the shards in `folder`) and return one Sequence per prompt."""
    from ..generation import generate_batch

    folder.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[Sequence | None] = [None] * len(prompts)
    t0, new_tokens, made = time.perf_counter(), 0, 0
    last_log = t0
    for b, batch in enumerate(batches):
        shard = folder / f"shard-{b:05d}.pt"
        if shard.is_file():
            rows = torch.load(shard, weights_only=True)
        else:
            # A prompt longer than max_len keeps its end (the answer must fit after it).
            cut = [prompts[i][-max(1, max_len - max_new_tokens) :] for i in batch]
            gen = generate_batch(
                loaded.model,
                cut,
                max_new_tokens,
                loaded.eos_ids,
                loaded.tokenizer.pad_token_id,
                want_hidden=True,
            )
            rows = [
                {"tokens": p + g.tokens, "prompt_len": len(p), "features": g.hidden.cpu()}
                for p, g in zip(cut, gen, strict=True)
            ]
            tmp = shard.with_suffix(".tmp")
            torch.save(rows, tmp)
            tmp.replace(shard)  # a shard is complete or absent
            new_tokens += sum(len(r["tokens"]) - r["prompt_len"] for r in rows)
            made += 1
        for i, r in zip(batch, rows, strict=True):
            out[i] = Sequence(r["tokens"], r["prompt_len"], r["features"])
        now = time.perf_counter()
        if made and (now - last_log >= 10.0 or b == len(batches) - 1):  # a line every 10 s at most
            last_log = now
            rate = new_tokens / max(now - t0, 1e-9)
            log(f"generated batch {b + 1}/{len(batches)}: {new_tokens:,} new tokens, {rate:,.0f} tokens/s")
    return [s for s in out if s is not None]


def data_sha256(sequences: list[Sequence], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for s in sequences:
        digest.update(json.dumps([s.prompt_len, s.tokens]).encode())
    return digest.hexdigest()
