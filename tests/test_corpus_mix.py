"""`generate:A,B`: one aligned corpus from several prompt sources, its overlap check, and
`--prompt-format plain` for generated corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from specbench_cli.datastores import build_index
from specbench_cli.datastores.corpus import iter_corpus
from specbench_cli.datastores.dresd import corpus_documents
from specbench_cli.datastores.manifest import check_datastore
from specbench_cli.files import sha256_file
from specbench_cli.models import tokenizer_fingerprint
from specbench_cli.types import SpecbenchError

QUIET = Console(quiet=True)
FIXTURES = Path(__file__).parent / "fixtures"


def options(tmp_path: Path, **kw) -> dict:
    base = {"text_key": [], "glob": None, "max_docs": None, "force": False, "batch_size": 4}
    return (
        base
        | {"max_new_tokens": 6, "dtype": "float32", "device": "cpu", "generated_dir": str(tmp_path / "gen")}
        | kw
    )


def maths_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "maths.jsonl"  # GSM8K's shape: the prompt is "question"
    path.write_text(
        "\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": "#### 2"}) for i in range(3))
    )
    return path


def test_two_sources_join_with_every_prompt_and_both_files(tiny, tmp_path):
    maths, code = maths_prompts(tmp_path), FIXTURES / "code_alpaca_small.json"
    rows = json.loads(code.read_text())
    joined = iter_corpus(f"generate:{maths},{code}", options(tmp_path), loaded=tiny, console=QUIET)
    alone = iter_corpus(f"generate:{maths}", options(tmp_path), loaded=tiny, console=QUIET)
    assert joined.kind == "generate" and joined.documents == 3 + len(rows)
    assert joined.suite == "maths+code_alpaca_small"
    assert list(joined.texts())[:3] == list(alone.texts())  # each part is generated (and cached) alone
    ids = [r["id"] for r in joined.records]
    assert len(set(ids)) == len(ids) and ids[0] == "maths/0"  # "0" of each part stays two prompts
    hashes = {f["sha256"] for f in joined.files}
    assert {sha256_file(maths), sha256_file(code)} <= hashes
    with_input = next(i for i, r in enumerate(rows) if (r.get("input") or "").strip())
    prompt = joined.records[3 + with_input]["prompt"]  # Alpaca records: instruction, then its input
    assert rows[with_input]["instruction"] in prompt and rows[with_input]["input"] in prompt
    with pytest.raises(SpecbenchError, match="twice"):
        iter_corpus(f"generate:{maths},{maths}", options(tmp_path), loaded=tiny, console=QUIET)
    with pytest.raises(SpecbenchError, match="empty source"):
        iter_corpus(f"generate:{maths},", options(tmp_path), loaded=tiny, console=QUIET)


def test_a_joined_store_is_refused_for_a_suite_any_part_holds(tiny, tmp_path):
    maths, code = maths_prompts(tmp_path), FIXTURES / "code_alpaca_small.json"
    out = tmp_path / "sam"
    build_index("sam", "tiny-random", f"generate:{maths},{code}", out, options(tmp_path), QUIET)
    fp = tokenizer_fingerprint(tiny.tokenizer)
    with pytest.raises(SpecbenchError, match="leaks"):  # the code part is that suite's question file
        check_datastore(out, "sam", fp, "code-alpaca", sha256_file(code), False)
    with pytest.raises(SpecbenchError, match="generated from suite 'maths'"):
        check_datastore(out, "sam", fp, "maths", "0" * 64, False)
    assert check_datastore(out, "sam", fp, "humaneval", "0" * 64, False)["note"] is None


def test_plain_prompt_format_generates_and_stores_question_answer_prompts(tiny, tmp_path):
    maths = maths_prompts(tmp_path)
    plain = iter_corpus(
        f"generate:{maths}", options(tmp_path, prompt_format="plain"), loaded=tiny, console=QUIET
    )
    chat = iter_corpus(f"generate:{maths}", options(tmp_path), loaded=tiny, console=QUIET)
    assert plain.answers_file != chat.answers_file  # the format is part of the cache key
    assert plain.to_manifest()["prompt_format"] == "plain"
    docs, formed = corpus_documents(plain, tiny.tokenizer, QUIET)
    assert formed == "plain prompt + generated answer"
    question = tiny.tokenizer("Question: What is 0 + 0?\nAnswer:\n")["input_ids"]
    assert docs[0][: len(question)].tolist() == question


def test_eval_warns_when_a_generated_store_answered_other_prompts(tiny, tmp_path):
    from specbench_cli.datastores.manifest import prompt_format_mismatch

    maths = maths_prompts(tmp_path)
    out = tmp_path / "sam"
    build_index(
        "sam", "tiny-random", f"generate:{maths}", out, options(tmp_path, prompt_format="plain"), QUIET
    )
    assert prompt_format_mismatch(out, "plain") is None
    warning = prompt_format_mismatch(out, "chat")
    assert warning and "plain prompts" in warning and "--prompt-format chat" in warning
