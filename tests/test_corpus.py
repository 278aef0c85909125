"""Corpus sources, manifests and their checks, and `build-index --method rest` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from specbench_cli.datastores import build_index
from specbench_cli.datastores import generate as generate_mod
from specbench_cli.datastores.base import file_records
from specbench_cli.datastores.corpus import iter_corpus, stdlib_files, tokenize_documents
from specbench_cli.datastores.manifest import (
    FORMAT_VERSION,
    check_datastore,
    new_manifest,
    read_manifest,
    write_manifest,
)
from specbench_cli.datastores.rest import RestDatastore
from specbench_cli.files import sha256_file
from specbench_cli.types import SpecbenchError

QUIET = Console(quiet=True)


def options(**kw) -> dict:
    base = {"text_key": [], "glob": None, "max_docs": None, "force": False, "batch_size": 4}
    return base | {"max_new_tokens": 6, "dtype": "float32", "device": "cpu"} | kw


def test_jsonl_joins_several_text_keys(tmp_path):
    rows = [
        {"instruction": "Add two numbers.", "input": "", "output": "a + b"},
        {"instruction": "Say hi", "output": "hi"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = iter_corpus(str(path), options(text_key=["instruction", "output"]))
    assert list(source.texts()) == ["Add two numbers.\na + b", "Say hi\nhi"]
    assert source.documents == 2 and len(source.sha256) == 64
    with pytest.raises(SpecbenchError, match="instruction, output"):  # names the keys that exist
        iter_corpus(str(path), options(text_key=["response"]))


def test_json_list_file_and_max_docs(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"text": f"doc {i}"} for i in range(5)]))
    source = iter_corpus(str(path), options(max_docs=3))
    assert list(source) == ["doc 0", "doc 1", "doc 2"]


def test_folder_with_glob_reads_matching_files_in_order(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / ".git").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("b = 2\n")
    (tmp_path / "pkg" / "sub" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code\n")
    (tmp_path / "pkg" / ".git" / "x.py").write_text("hidden\n")
    source = iter_corpus(str(tmp_path / "pkg"), options(glob="**/*.py"))
    assert list(source) == ["b = 2\n", "a = 1\n"]
    before = source.sha256
    (tmp_path / "pkg" / "b.py").write_text("b = 3\n")
    assert iter_corpus(str(tmp_path / "pkg"), options(glob="**/*.py")).sha256 != before
    with pytest.raises(SpecbenchError, match="no files match"):
        iter_corpus(str(tmp_path / "pkg"), options(glob="*.rs"))
    with pytest.raises(SpecbenchError, match="not found"):
        iter_corpus(str(tmp_path / "missing.jsonl"), options())


def test_stdlib_yields_real_library_files():
    root, paths = stdlib_files()
    assert len(paths) > 300
    assert not any({"site-packages", "test", "tests"} & set(p.relative_to(root).parts) for p in paths)
    assert root / "json" / "decoder.py" in paths
    source = iter_corpus("stdlib", options(max_docs=5))
    texts = list(source)
    assert len(texts) == 5 and all(texts) and source.kind == "stdlib"


def test_tokenize_documents_gives_uint32_arrays(tiny):
    arrays = list(tokenize_documents(["ab", "", "c"], tiny.tokenizer, console=QUIET))
    assert [a.tolist() for a in arrays] == [[97, 98], [99]]
    assert all(a.dtype == np.uint32 for a in arrays)


# ----------------------------------------------------------------------------------------------------
# Manifest checks


def store_with(tmp_path: Path, method="rest", fingerprint="fp-a", corpus=None) -> Path:
    folder = tmp_path / "store"
    folder.mkdir(exist_ok=True)
    corpus = corpus or {
        "spec": "x.jsonl",
        "kind": "json",
        "description": "x",
        "sha256": "a" * 64,
        "files": [],
    }
    (folder / "data.npy").write_bytes(b"store data")
    manifest = new_manifest(method, {"name": "m", "fingerprint": fingerprint}, corpus, {})
    write_manifest(folder, manifest | {"files": file_records(folder)})
    return folder


def test_manifest_round_trip_and_bad_files(tmp_path):
    folder = store_with(tmp_path)
    m = read_manifest(folder)
    assert m["format_version"] == FORMAT_VERSION and m["method"] == "rest" and m["created"].endswith("Z")
    with pytest.raises(SpecbenchError, match="not a datastore"):
        read_manifest(tmp_path / "nothing")
    write_manifest(folder, m | {"format_version": 99})
    with pytest.raises(SpecbenchError, match="format version 99"):
        read_manifest(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(SpecbenchError, match="not valid JSON"):
        read_manifest(folder)


def test_check_refuses_other_method_and_other_tokenizer(tmp_path):
    folder = store_with(tmp_path)
    assert check_datastore(folder, "rest", "fp-a", "humaneval", "b" * 64, False)["note"] is None
    with pytest.raises(SpecbenchError, match="--method rest"):
        check_datastore(folder, "dresd", "fp-a", None, None, False)
    with pytest.raises(SpecbenchError, match="tokenizer"):
        check_datastore(folder, "rest", "fp-other", None, None, True)  # force does not cover this


def test_check_refuses_a_leaking_corpus_unless_forced(tmp_path):
    leak_sha = "c" * 64
    text = {"spec": "q.json", "kind": "json", "description": "q", "sha256": leak_sha, "files": []}
    folder = store_with(tmp_path, corpus=text)
    with pytest.raises(SpecbenchError, match="leaks the evaluation questions"):
        check_datastore(folder, "rest", "fp-a", "code-alpaca", leak_sha, False)
    forced = check_datastore(folder, "rest", "fp-a", "code-alpaca", leak_sha, True)
    assert forced["forced"] and "force" in forced["note"]

    generated = {"spec": "generate:mt-bench", "kind": "generate", "description": "g", "sha256": "d" * 64,
                 "files": [], "suite": "mt-bench", "suite_sha256": "e" * 64}  # fmt: skip
    folder = store_with(tmp_path, corpus=generated)
    with pytest.raises(SpecbenchError, match="generated from suite 'mt-bench'"):
        check_datastore(folder, "rest", "fp-a", "mt-bench#writing", "f" * 64, False)
    with pytest.raises(SpecbenchError, match="leaks"):
        check_datastore(folder, "rest", "fp-a", "jsonl-other", "e" * 64, False)
    assert check_datastore(folder, "rest", "fp-a", "humaneval", "f" * 64, False)["note"] is None


# ----------------------------------------------------------------------------------------------------
# build-index end to end with the tiny model


def test_build_index_rest_from_jsonl(tiny, tmp_path):
    from specbench_cli.models import tokenizer_fingerprint

    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) for i in range(20)))
    out = tmp_path / "rest"
    manifest = build_index("rest", "tiny-random", str(path), out, options(text_key=["q", "a"]), QUIET)
    assert manifest["documents"] == 20 and manifest["tokens"] > 100
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tiny.tokenizer)
    assert manifest["corpus"]["sha256"] == sha256_file(path)
    store = RestDatastore(out)
    conts = {bytes(c.tolist()).decode() for c in store.continuations(list(b"answer 1"), length=3)}
    assert conts == {str(d) for d in range(10)}  # "answer 1" ends its document: no continuation
    with pytest.raises(SpecbenchError, match="already exists"):
        build_index("rest", "tiny-random", str(path), out, options(), QUIET)
    with pytest.raises(SpecbenchError, match="unknown datastore kind"):
        build_index("bm25", "tiny-random", str(path), tmp_path / "x", options(), QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "rest"]


def test_generate_corpus_writes_answers_once_and_reuses_them(tiny, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "instruction": f"Write {i}"}) for i in range(3)))
    opts = options(generated_dir=str(tmp_path / "gen"))
    first = iter_corpus(f"generate:{prompts}", opts, loaded=tiny, console=QUIET)
    assert first.kind == "generate" and first.suite == "prompts" and first.documents == 3
    assert first.suite_sha256 == sha256_file(prompts)
    lines = first.answers_file.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["new_tokens"] <= 6 for x in lines)

    def no_generation(*args, **kwargs):
        raise AssertionError("answers should have been reused")

    monkeypatch.setattr(generate_mod, "answer_batch", no_generation)
    again = iter_corpus(f"generate:{prompts}", opts, loaded=tiny, console=QUIET)
    assert list(again.texts()) == list(first.texts()) and again.sha256 == first.sha256


def test_generation_cache_key_changes_with_every_setting(tiny):
    """Any setting that changes an answer gives another answers file (never a stale one reused)."""
    from dataclasses import fields, replace

    from specbench_cli.datastores.generate import GenerationSettings, generation_key

    base = GenerationSettings()
    key = generation_key(tiny, "p" * 64, 3, base)
    assert generation_key(tiny, "p" * 64, 3, GenerationSettings()) == key
    changed = {"max_new_tokens": 7, "temperature": 0.7, "seed": 1, "batch_size": 3, "prompt_format": "plain"}
    assert set(changed) == {f.name for f in fields(GenerationSettings)}
    for name, value in changed.items():
        assert generation_key(tiny, "p" * 64, 3, replace(base, **{name: value})) != key, name
    assert generation_key(tiny, "q" * 64, 3, base) != key
    assert generation_key(tiny, "p" * 64, 4, base) != key
    for name, value in {"dtype": "bfloat16", "device": "cuda", "name": "other", "sha256": "0" * 64}.items():
        assert generation_key(replace(tiny, **{name: value}), "p" * 64, 3, base) != key, name


def test_generate_corpus_samples_with_a_seed(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "instruction": f"Write {i}"}) for i in range(3)))

    def answers(**kw):
        source = iter_corpus(
            f"generate:{prompts}", options(generated_dir=str(tmp_path / "gen"), **kw), tiny, QUIET
        )
        return source.answers_file, list(source.texts())

    greedy_file, greedy = answers()
    sampled_file, sampled = answers(temperature=1.0, seed=1)
    again_file, again = answers(temperature=1.0, seed=1)
    other_file, other = answers(temperature=1.0, seed=2)
    assert len({greedy_file, sampled_file, other_file}) == 3 and again_file == sampled_file
    assert again == sampled and sampled != greedy and sampled != other


def test_generate_corpus_answers_are_the_same_in_batches_as_one_at_a_time(tiny, tmp_path):
    """The product path (sorting by length, left padding, EOS cut) gives each prompt its solo answer."""
    prompts = tmp_path / "prompts.jsonl"
    texts = ["Hi", "Write a long function that sorts a list of numbers", "Add 2 and 3", "Explain x"]
    prompts.write_text("\n".join(json.dumps({"id": i, "instruction": t}) for i, t in enumerate(texts)))

    def answers(batch_size):
        opts = options(
            generated_dir=str(tmp_path / f"gen{batch_size}"), batch_size=batch_size, max_new_tokens=12
        )
        return {r["id"]: r["answer"] for r in iter_corpus(f"generate:{prompts}", opts, tiny, QUIET).records}

    assert answers(4) == answers(1)
