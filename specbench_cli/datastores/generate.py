"""`--corpus generate:SUITE_OR_FILE`: the target model's own greedy answers as a corpus.

The prompts come from a suite (its questions, every turn) or a JSON/JSONL file (--text-key picks the
prompt field). Answers are generated in batches, turn by turn, and appended to a JSONL file keyed by
everything that changes them (model, weights, dtype, tokenizer, prompts, length), so an interrupted
build resumes and the next build with the same key reuses the file instead of generating again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from ..files import sha256_file
from ..types import SpecbenchError
from .corpus import DEFAULT_PROMPT_KEYS, CorpusSource, pick_keys, read_records, record_text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"


def load_prompts(
    target: str, keys: list[str], max_docs: int | None
) -> tuple[str, str, str, list[tuple[str, list[str]]]]:
    """(suite name, source description, sha256, [(id, turns)]) for a suite spec or a prompt file."""
    path = Path(target).expanduser()
    if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        records = read_records(path)[:max_docs]
        keys = pick_keys(records, keys, DEFAULT_PROMPT_KEYS, path, "prompt")
        prompts = []
        for i, r in enumerate(records):
            turns = list(r["turns"]) if keys == ["turns"] else [record_text(r, keys)]
            rid = r.get("question_id", r.get("id", i)) if isinstance(r, dict) else i
            if turns and all(t.strip() for t in turns):
                prompts.append((str(rid), turns))
        return path.stem, str(path), sha256_file(path), prompts
    from ..suites import load_suite

    suite = load_suite(target, max_docs, 0)
    return (
        suite.name,
        suite.source,
        suite.sha256,
        [(str(q.question_id), list(q.turns)) for q in suite.questions],
    )


def generation_key(
    loaded, prompts_sha: str, n_prompts: int, max_new_tokens: int, prompt_format: str = "chat"
) -> str:
    """What makes two generate: runs give the same answers (the cache key of the JSONL)."""
    from ..models import tokenizer_fingerprint

    fields = {
        "model": loaded.name,
        "weights": loaded.sha256,
        "dtype": loaded.dtype,
        "tokenizer": tokenizer_fingerprint(loaded.tokenizer),
        "prompts": prompts_sha,
        "n_prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "prompt_format": prompt_format,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def generated_corpus(spec: str, target: str, options: dict, loaded, console) -> CorpusSource:
    suite, source, prompts_sha, prompts = load_prompts(
        target, list(options.get("text_key") or []), options.get("max_docs")
    )
    if not prompts:
        raise SpecbenchError(f"generate:{target} gave no prompts")
    max_new = int(options.get("max_new_tokens") or 256)
    prompt_format = options.get("prompt_format") or "chat"
    key = generation_key(loaded, prompts_sha, len(prompts), max_new, prompt_format)
    if options.get("answers_file"):
        answers_file = Path(options["answers_file"])
    else:
        folder = Path(options.get("generated_dir") or "generated")
        answers_file = folder / f"{_slug(suite)}.{_slug(Path(loaded.name).name)}.{key[:12]}.jsonl"
    records = generate_answers(
        loaded,
        prompts,
        answers_file,
        key,
        int(options.get("batch_size") or 8),
        max_new,
        console,
        prompt_format,
    )
    sha = sha256_file(answers_file)
    return CorpusSource(
        spec=spec,
        kind="generate",
        description=f"{loaded.name}'s greedy answers (<= {max_new} tokens) to {len(prompts)} prompts of {suite}",
        sha256=sha,
        files=[{"name": str(answers_file), "sha256": sha}, {"name": source, "sha256": prompts_sha}],
        documents=len(records),
        read_texts=lambda: (r["answer"] for r in records),
        suite=suite,
        suite_sha256=prompts_sha,
        answers_file=answers_file,
        records=records,
        prompt_format=prompt_format,
    )


def generate_answers(
    loaded,
    prompts: list[tuple[str, list[str]]],
    path: Path,
    key: str,
    batch_size: int,
    max_new_tokens: int,
    console,
    prompt_format: str = "chat",
) -> list[dict]:
    """Answer every turn of every prompt greedily, appending each batch to `path` as it finishes.

    A file left by an earlier run with the same key is reused: answers already there are not
    generated again, so an interrupted run resumes. Multi-turn prompts are answered turn by turn (turn
    t sees the model's own answers to turns < t), every turn batched across prompts.
    """
    from ..progress import progress_bar
    from ..prompts import build_prompt_ids

    done: dict[tuple[str, int], dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else None
            if rec and rec.get("key") == key:
                done[(rec["id"], rec["turn"])] = rec
    path.parent.mkdir(parents=True, exist_ok=True)
    todo_total = sum(len(t) for _, t in prompts) - len(done)
    progress = progress_bar("generating answers", "{task.fields[rate]}", console, remaining=False)
    with progress, open(path, "a") as out:
        task = progress.add_task("gen", total=todo_total, rate="")
        t0, new_tokens = time.perf_counter(), 0
        for turn in range(max(len(t) for _, t in prompts)):
            jobs = []
            for pid, turns in prompts:
                if turn < len(turns) and (pid, turn) not in done:
                    answers = [done[(pid, t)]["answer"] for t in range(turn)]
                    jobs.append(
                        (
                            pid,
                            turns,
                            build_prompt_ids(loaded.tokenizer, turns[: turn + 1], answers, prompt_format),
                        )
                    )
            jobs.sort(key=lambda j: len(j[2]))  # similar lengths share a batch: less padding
            for i in range(0, len(jobs), batch_size):
                batch = jobs[i : i + batch_size]
                outputs = generate_batch(loaded, [j[2] for j in batch], max_new_tokens)
                for (pid, turns, _), ids in zip(batch, outputs, strict=True):
                    rec = {
                        "id": pid,
                        "turn": turn,
                        "prompt": turns[turn],
                        "answer": loaded.tokenizer.decode(ids, skip_special_tokens=True),
                        "new_tokens": len(ids),
                        "key": key,
                    }
                    done[(pid, turn)] = rec
                    out.write(json.dumps(rec) + "\n")
                    new_tokens += len(ids)
                out.flush()
                rate = new_tokens / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=len(batch), rate=f"{rate:,.0f} tok/s")
    return [done[(pid, t)] | {"turns": turns[: t + 1]} for pid, turns in prompts for t in range(len(turns))]


def generate_batch(loaded, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers to a batch of prompt ids (left-padded), each cut at its first end-of-sequence id."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    eos = set(loaded.eos_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (loaded.eos_ids or [0])[0]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(eos) or None,
        )
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        answers.append(row[:cut])
    return answers
