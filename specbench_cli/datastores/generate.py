"""`--corpus generate:SUITE_OR_FILE`: the target model's own answers (greedy by default) as a corpus.

The prompts come from a suite (its questions, every turn) or a JSON/JSONL file (--text-key picks the
prompt field). Answers are generated in batches of `--batch-size` prompts (256 on a GPU, 64 on a CPU; generation.py:
left-padded, each row with its own positions, equal to one-at-a-time decoding), turn by turn, and
appended to a JSONL file keyed by everything that changes them (model, weights, dtype, device,
tokenizer, prompts, and every GenerationSettings field: length, temperature, seed, batch size), so an
interrupted build resumes and the next build with the same key reuses the file instead of generating
again. `--temperature T --seed S` samples instead of greedy. A progress bar shows generated tokens/s.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import sha256_file
from ..generation import CPU_BATCH, default_batch
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


@dataclass(frozen=True)
class GenerationSettings:
    """Everything besides the model and the prompts that changes a generated answer (all in the cache key)."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    seed: int = 0  # sampling seed (a batch's generator is seeded from it and the batch's prompts)
    batch_size: int = CPU_BATCH  # generation.default_batch picks per device; padding and batch shapes change low-precision rounding
    prompt_format: str = "chat"  # prompts.PROMPT_FORMATS: how each prompt is laid out

    @property
    def decoding(self) -> str:
        return (
            "greedy"
            if self.temperature <= 0
            else f"sampled at temperature {self.temperature:g}, seed {self.seed}"
        )


def generation_key(loaded, prompts_sha: str, n_prompts: int, settings: GenerationSettings) -> str:
    """What makes two generate: runs give the same answers (the cache key of the JSONL)."""
    from ..models import tokenizer_fingerprint

    fields = {
        "model": loaded.name,
        "weights": loaded.sha256,
        "dtype": loaded.dtype,
        "device": str(loaded.device),
        "tokenizer": tokenizer_fingerprint(loaded.tokenizer),
        "prompts": prompts_sha,
        "n_prompts": n_prompts,
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def generated_corpus(spec: str, target: str, options: dict, loaded, console) -> CorpusSource:
    suite, source, prompts_sha, prompts = load_prompts(
        target, list(options.get("text_key") or []), options.get("max_docs")
    )
    if not prompts:
        raise SpecbenchError(f"generate:{target} gave no prompts")
    settings = GenerationSettings(
        max_new_tokens=int(options.get("max_new_tokens") or 256),
        temperature=float(options.get("temperature") or 0.0),
        seed=int(options.get("seed") or 0),
        batch_size=int(options.get("batch_size") or default_batch(loaded.device)),
        prompt_format=options.get("prompt_format") or "chat",
    )
    key = generation_key(loaded, prompts_sha, len(prompts), settings)
    if options.get("answers_file"):
        answers_file = Path(options["answers_file"])
    else:
        folder = Path(options.get("generated_dir") or "generated")
        answers_file = folder / f"{_slug(suite)}.{_slug(Path(loaded.name).name)}.{key[:12]}.jsonl"
    records = generate_answers(loaded, prompts, answers_file, key, settings, console)
    sha = sha256_file(answers_file)
    return CorpusSource(
        spec=spec,
        kind="generate",
        description=f"{loaded.name}'s answers ({settings.decoding}, <= {settings.max_new_tokens} tokens) "
        f"to {len(prompts)} prompts of {suite}",
        sha256=sha,
        files=[{"name": str(answers_file), "sha256": sha}, {"name": source, "sha256": prompts_sha}],
        documents=len(records),
        read_texts=lambda: (r["answer"] for r in records),
        suite=suite,
        suite_sha256=prompts_sha,
        answers_file=answers_file,
        records=records,
        prompt_format=settings.prompt_format,
    )


def generate_answers(
    loaded,
    prompts: list[tuple[str, list[str]]],
    path: Path,
    key: str,
    settings: GenerationSettings,
    console,
) -> list[dict]:
    """Answer every turn of every prompt (greedy unless settings.temperature > 0), appending each
    batch to `path` as it finishes.

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
                    prompt = build_prompt_ids(
                        loaded.tokenizer, turns[: turn + 1], answers, settings.prompt_format
                    )
                    jobs.append((pid, turns, prompt))
            jobs.sort(key=lambda j: len(j[2]))  # similar lengths share a batch: less padding
            for i in range(0, len(jobs), settings.batch_size):
                batch = jobs[i : i + settings.batch_size]
                outputs = answer_batch(
                    loaded, [j[2] for j in batch], settings, batch_seed(settings, batch, turn)
                )
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


def batch_seed(settings: GenerationSettings, batch: list, turn: int) -> int:
    """A sampling seed of the settings' seed and the batch's prompts: a resumed run that forms the same
    batches draws the same answers."""
    ids = json.dumps([settings.seed, turn, [j[0] for j in batch]]).encode()
    return int(hashlib.sha256(ids).hexdigest()[:15], 16)


def answer_batch(
    loaded, prompts: list[list[int]], settings: GenerationSettings, seed: int
) -> list[list[int]]:
    """Answers to a batch of prompt ids (generation.py: left-padded, own positions per row), each cut
    before its first end-of-sequence id."""
    from ..generation import generate_batch

    eos = set(loaded.eos_ids)
    pad = loaded.tokenizer.pad_token_id
    rows = generate_batch(
        loaded.model,
        prompts,
        settings.max_new_tokens,
        eos_ids=sorted(eos),
        pad_id=pad,
        temperature=settings.temperature,
        seed=seed,
    )
    return [r.tokens[:-1] if r.tokens and r.tokens[-1] in eos else r.tokens for r in rows]
