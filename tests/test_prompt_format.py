"""`eval --prompt-format plain` (DReSD's Question/Answer prompt) and `--max-turns` (MT-Bench turn 1)."""

from __future__ import annotations

import json

from test_cli import QUESTIONS, assert_one_line_error, eval_args, run


def test_plain_is_the_question_answer_layout_even_with_a_chat_template(tiny):
    from specbench_cli.prompts import build_prompt_ids

    assert tiny.tokenizer.chat_template  # the tiny model has one, so chat and plain must differ
    plain = build_prompt_ids(tiny.tokenizer, ["Sort a list."], [], "plain")
    assert plain == tiny.tokenizer("Question: Sort a list.\nAnswer:\n")["input_ids"]
    assert plain != build_prompt_ids(tiny.tokenizer, ["Sort a list."], [])  # chat stays the default
    two = build_prompt_ids(tiny.tokenizer, ["a?", "b?"], ["A."], "plain")
    assert two == tiny.tokenizer("Question: a?\nAnswer:\nA.\n\nQuestion: b?\nAnswer:\n")["input_ids"]


def test_eval_plain_first_turn_answers_the_plain_prompt_and_resume_keeps_both(tmp_path, tiny):
    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.types import MethodSetup

    out = tmp_path / "run"
    args = eval_args(out, "--limit", "2", "--prompt-format", "plain", "--max-turns", "1")
    args[args.index("--suite") + 1] = f"jsonl:{QUESTIONS}#code"  # question 2 has two turns
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert 'prompt: plain "Question: ...\\nAnswer:\\n", first 1 turn(s)' in result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["prompt_format"], config["max_turns"]) == ("plain", 1)
    records = [json.loads(x) for x in next((out / "answers").glob("*/ar.jsonl")).read_text().splitlines()]
    assert all(len(r["choices"][0]["output_ids"]) == 1 for r in records)  # first turn only
    lines = [x for x in QUESTIONS.read_text().splitlines() if x.strip()]
    questions = {q["question_id"]: q for q in map(json.loads, lines)}
    two = [r for r in records if r["question_id"] == 2][0]["choices"][0]
    ids = tiny.tokenizer(f"Question: {questions[2]['turns'][0]}\nAnswer:\n")["input_ids"]
    again = generate(Engine(tiny, 512), Autoregressive(MethodSetup(target=tiny)), ids, 12)
    assert again.output_ids == two["output_ids"][0]

    chat = list(args)
    chat[chat.index("--prompt-format") + 1] = "chat"
    assert_one_line_error(run(*chat, "--resume"), "prompt_format", "'plain'", "'chat'")
    all_turns = args[: args.index("--max-turns")] + args[args.index("--max-turns") + 2 :]
    assert_one_line_error(run(*all_turns, "--resume"), "max_turns", "1", "None")
    assert run(*args, "--resume").exit_code == 0  # the same settings resume


def test_bad_prompt_format_and_max_turns_are_one_line_errors(tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(run(*eval_args(out, "--prompt-format", "html")), "html", "chat", "plain")
    assert_one_line_error(run(*eval_args(out, "--max-turns", "0")), "--max-turns", "0")
    assert not out.exists()


def test_a_config_from_before_the_options_resumes_as_chat_and_all_turns():
    from specbench_cli.evaluate import provenance_mismatch

    old = {"model": "m", "suites_info": []}  # written before --prompt-format and --max-turns existed
    assert provenance_mismatch(old, old | {"prompt_format": "chat", "max_turns": None}) is None
    assert provenance_mismatch(old, old | {"prompt_format": "plain"}) == ("prompt_format", "chat", "plain")
    assert provenance_mismatch(old, old | {"max_turns": 1}) == ("max_turns", None, 1)
