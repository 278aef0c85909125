"""EAGLE head and `eagle2`: training lowers the loss, the head's cache stays in step with the
committed tokens, a head made for another target is refused, and the hybrids run on it losslessly."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.drafters.eagle2 import Eagle2
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.generation import generate_batch
from specbench_cli.head.data import Sequence
from specbench_cli.head.train import TrainSettings, train_head
from specbench_cli.registry import DRAFTERS
from specbench_cli.types import DraftTree, MethodSetup, SpecbenchError


def tiny_sequences(loaded, n: int = 24, new: int = 32, seed: int = 0) -> list[Sequence]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(loaded.vocab_size) for _ in range(rng.randint(3, 10))] for _ in range(n)]
    rows = generate_batch(loaded.model, prompts, new, want_hidden=True)
    return [Sequence(p + r.tokens, len(p), r.hidden) for p, r in zip(prompts, rows)]


def build_tiny_head(folder: Path, loaded, epochs: int = 3) -> Path:
    """A head for `loaded` trained for a few steps on its own greedy answers to random prompts."""
    settings = TrainSettings(epochs=epochs, lr=3e-3, batch_sequences=8)
    corpus = {"spec": "random prompts", "description": "random token prompts", "sha256": "0" * 64}
    train_head(
        loaded, tiny_sequences(loaded), settings, folder, corpus, {"max_new_tokens": 32}, log=lambda *_: None
    )
    return folder


@pytest.fixture(scope="module")
def head_dir(tiny, tmp_path_factory):
    return build_tiny_head(tmp_path_factory.mktemp("head") / "h", tiny)


def test_training_lowers_the_loss_and_writes_a_checkpoint(head_dir):
    import json

    manifest = json.loads((head_dir / "manifest.json").read_text())
    state = torch.load(head_dir / "train_state.pt", weights_only=False)
    losses = [c["loss"] for c in state["curve"]]
    assert len(losses) >= 6
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert manifest["complete"] and manifest["validation"]["top1"] > 0.1
    assert manifest["target"]["name"] == "tiny-random" and (head_dir / "curve.png").stat().st_size > 1000


def test_training_resumes_and_refuses_other_settings(tiny, tmp_path):
    seqs = tiny_sequences(tiny, n=6, new=8)
    corpus = {"spec": "x", "sha256": "0" * 64}
    quiet = {"log": lambda *_: None}
    train_head(tiny, seqs, TrainSettings(epochs=1, batch_sequences=8), tmp_path, corpus, {}, **quiet)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    with pytest.raises(SpecbenchError, match="other settings"):
        train_head(
            tiny, seqs, TrainSettings(epochs=1, lr=1e-3, batch_sequences=8), tmp_path, corpus, {}, **quiet
        )
    lines = []
    train_head(tiny, seqs, TrainSettings(epochs=1, batch_sequences=8), tmp_path, corpus, {}, log=lines.append)
    assert lines == ["resuming from epoch 1 of 1"]  # nothing left to do: no step was run again
    assert torch.load(tmp_path / "train_state.pt", weights_only=False)["curve"] == state["curve"]


class Recording(Eagle2):
    """Remembers, at every step, the tokens and the head's level-1 log-probs it drafted from."""

    def grow(self, ctx):
        grown = super().grow(ctx)
        self.log.append(
            (list(ctx.tokens), grown.root_logprobs.clone(), grown.tree, dict(grown.expanded_logprobs))
        )
        return grown


@torch.inference_mode()
def head_from_scratch(tiny, head, tokens: list[int], path: list[int]) -> torch.Tensor:
    """The head's log-probs after `tokens` + `path`, without any cache: the target's features for the
    committed pairs, then the head's own predicted feature for each drafted token, one pair at a time."""
    feats = tiny.model(torch.tensor([tokens[:-1]]), output_hidden_states=True).hidden_states[-1]
    seq = list(tokens[1:])
    out = head(torch.tensor([seq]), features=feats)
    for tok in path:  # the drafted token, paired with the feature the head predicted for its parent
        seq.append(tok)
        feats = torch.cat([feats, out.hidden_states[-1][:, -1:]], dim=1)
        out = head(torch.tensor([seq]), features=feats)
    return torch.log_softmax(out.logits[0, -1].float(), -1)


def assert_drafts_match_the_head_from_scratch(tiny, drafter, every: int = 1, deep_every: int = 3) -> None:
    """Every `every`-th recorded step's level-1 log-probs, and every `deep_every`-th expanded node of
    the last step's tree, equal the head run from scratch on the same path."""
    for tokens, logp, _, _ in drafter.log[::every]:
        torch.testing.assert_close(logp, head_from_scratch(tiny, drafter.head, tokens, []), atol=1e-4, rtol=0)
    tokens, _, tree, expanded = drafter.log[-1]
    assert len(expanded) >= 10
    for node, row in list(expanded.items())[::deep_every]:
        path, i = [], node
        while i >= 0:
            path.append(tree.tokens[i])
            i = tree.parents[i]
        torch.testing.assert_close(
            row, head_from_scratch(tiny, drafter.head, tokens, path[::-1]), atol=1e-4, rtol=0
        )


def test_head_cache_stays_in_step_after_partial_acceptance(tiny, head_dir):
    drafter = Recording(MethodSetup(target=tiny, draft_head=head_dir))
    drafter.log = []
    engine = Engine(tiny, max_len=256)
    prompt = [5, 17, 99, 4, 230, 8, 61]
    gen = generate(engine, drafter, prompt, 40)
    assert gen.output_ids == generate(engine, Autoregressive(MethodSetup(target=tiny)), prompt, 40).output_ids
    steps = gen.steps[1:]
    assert any(0 < s.accepted < s.draft_depth for s in steps)  # partial acceptance happened
    assert sum(s.accepted for s in steps) > 0
    # Root and deeper levels: each expanded node's children scores equal the head run pair by pair.
    assert_drafts_match_the_head_from_scratch(tiny, drafter)


class Scoring(Eagle2):
    """Scores a fixed trie below the root at every step (RASD's pruning call), as a hybrid would."""

    trie = DraftTree.from_paths([[3, 9, 4], [3, 9, 7], [11, 2, 8]])

    def propose(self, ctx):
        grown = self.grow(ctx)
        self.scored.append((list(ctx.tokens), self.score(self.trie, grown.root_logprobs)))
        return grown.tree


def test_score_gives_the_heads_path_probabilities(tiny, head_dir):
    # One head forward per trie level, queued, each fed its parent's predicted feature: every node's
    # cumulative log-probability must be the head's, run pair by pair from scratch along its path.
    drafter = Scoring(MethodSetup(target=tiny, draft_head=head_dir))
    drafter.scored = []
    generate(Engine(tiny, max_len=256), drafter, [5, 17, 99, 4, 230, 8, 61], 12)
    assert len(drafter.scored) >= 2
    for tokens, got in drafter.scored[::2]:
        for node, want in enumerate(_path_logprobs(tiny, drafter.head, tokens, Scoring.trie)):
            assert got[node] == pytest.approx(want, abs=1e-4)


def _path_logprobs(tiny, head, tokens: list[int], tree: DraftTree) -> list[float]:
    out = []
    for node in range(len(tree)):
        path, i = [], node
        while i >= 0:
            path.append(tree.tokens[i])
            i = tree.parents[i]
        path.reverse()
        out.append(
            sum(float(head_from_scratch(tiny, head, tokens, path[:j])[path[j]]) for j in range(len(path)))
        )
    return out


def test_a_head_for_another_target_is_refused(tiny_draft, head_dir):
    with pytest.raises(
        SpecbenchError, match=r"trained for 'tiny-random'.*not for 'tiny-random-draft'"
    ) as err:
        Eagle2(MethodSetup(target=tiny_draft, draft_head=head_dir))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["rasd", "respec"])
def test_hybrids_run_on_the_head_losslessly(method, tiny, head_dir):
    cls = DRAFTERS.get(method)
    options = {} if cls.lossless else dict(cls.lossless_options)
    drafter = cls(MethodSetup(target=tiny, draft_head=head_dir, options=options))
    assert isinstance(drafter.host, Eagle2)
    engine = Engine(tiny, max_len=256)
    ar = Autoregressive(MethodSetup(target=tiny))
    accepted = 0
    for prompt in ([3, 9, 27, 81, 243, 9, 27, 81], [7, 7, 7, 12, 40, 7, 7, 7, 12]):
        gen = generate(engine, drafter, prompt, 32)
        assert gen.output_ids == generate(engine, ar, prompt, 32).output_ids
        accepted += sum(s.accepted for s in gen.steps)
    assert accepted > 0


def test_eagle2_on_the_compiled_engine(tiny, head_dir):
    # Static shapes and the tree attention kernel's path (graphs only on CUDA): the target and the
    # head both get compiled runners from the factory, as under --engine compiled.
    from specbench_cli.engine.compiled import CompiledRunner
    from specbench_cli.engine.factory import RunnerFactory

    engine = Engine(tiny, max_len=320, max_nodes=64, kind="compiled")
    drafter = Recording(MethodSetup(target=tiny, draft_head=head_dir, runners=RunnerFactory("compiled", 320)))
    assert isinstance(drafter.runner, CompiledRunner)
    ar = Autoregressive(MethodSetup(target=tiny))
    reference = Engine(tiny, max_len=320, max_nodes=64)
    head_eager = []  # the head's catch-ups come in pieces its graphs hold: no eager forward
    real_eager = drafter.runner._eager_forward
    drafter.runner._eager_forward = lambda *a, **k: head_eager.append(1) or real_eager(*a, **k)
    rng = random.Random(3)
    for prompt in (
        [rng.randrange(tiny.vocab_size) for _ in range(25)],
        [rng.randrange(200) for _ in range(150)],
    ):
        drafter.log = []
        gen = generate(engine, drafter, prompt, 24)
        assert gen.output_ids == generate(reference, ar, prompt, 24).output_ids
        assert sum(s.accepted for s in gen.steps) > 0
        # The levels went in as device tensors (forward_tensors): the head still drafts exactly what
        # it drafts from scratch, at the root and below it.
        assert_drafts_match_the_head_from_scratch(tiny, drafter, every=4, deep_every=7)
    assert not head_eager


def test_eval_runs_eagle2_and_rasd_on_the_head(tmp_path, head_dir):
    import json

    from test_cli import eval_args, run

    out = tmp_path / "run"
    result = run(
        *eval_args(
            out, "--methods", "ar,eagle2,rasd", "--draft-head", str(head_dir), "--limit", "2", "--warmup", "1"
        )
    )
    assert result.exit_code == 0, result.output
    answers = {
        p.stem: [json.loads(x) for x in p.read_text().splitlines()]
        for p in (out / "answers").glob("*/*.jsonl")
    }
    for method in ("eagle2", "rasd"):
        for mine, ar in zip(answers[method], answers["ar"], strict=True):
            assert mine["choices"][0]["output_ids"] == ar["choices"][0]["output_ids"]
    config = json.loads((out / "config.json").read_text())
    assert config["datastores_info"]["draft-head"]["path"] == str(head_dir)
    assert config["methods_params"]["rasd"]["host"]["draft_head"] == str(head_dir)
    # The report prices the head's draft forwards with the head's own measured cost (c and prediction).
    from specbench_cli.engine.compiled import BUCKETS  # an eager runner is probed at these sizes

    assert set(config["forward_costs"]["head"]) == {str(s) for s in BUCKETS}
    rows = {r["method"]: r for r in json.loads((out / "costs.json").read_text())["methods"]}
    for method in ("eagle2", "rasd"):
        assert rows[method]["draft_network"] == "head" and rows[method]["c"] > 0
        assert rows[method]["predicted_speedup"] > 0
    assert rows["ar"]["draft_network"] == ""


def test_eval_refuses_a_bad_head_in_one_line_and_writes_nothing(tmp_path, head_dir):
    import json
    import shutil

    from test_cli import QUESTIONS, assert_one_line_error, eval_args, run

    from specbench_cli.files import sha256_file

    out = tmp_path / "run"
    assert_one_line_error(run(*eval_args(out, "--methods", "ar,eagle2")), "--draft-head")
    foreign = eval_args(out, "--methods", "ar,eagle2", "--draft-head", str(head_dir))
    foreign[foreign.index("tiny-random")] = "tiny-random-draft"
    assert_one_line_error(run(*foreign), "trained for 'tiny-random'")
    leaky = tmp_path / "leaky"
    shutil.copytree(head_dir, leaky)
    manifest = json.loads((leaky / "manifest.json").read_text())
    manifest["corpus"]["files"] = [{"name": str(QUESTIONS), "sha256": sha256_file(QUESTIONS)}]
    (leaky / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run(*eval_args(out, "--methods", "ar,eagle2", "--draft-head", str(leaky))), "leaks")
    assert_one_line_error(
        run(*eval_args(out, "--methods", "ar,eagle2", "--draft-head", str(tmp_path))), "not a draft head"
    )
    assert not out.exists()


def test_train_head_bad_input_is_one_line(tmp_path):
    from test_cli import assert_one_line_error, run

    out = tmp_path / "head"
    base = [
        "train-head",
        "--model",
        "tiny-random",
        "--prompts",
        "/no/such.jsonl",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert_one_line_error(run(*base, "--epochs", "0"), "epochs")
    assert_one_line_error(run(*base), "/no/such.jsonl")
    assert not out.exists()


def test_train_head_refuses_an_evaluation_suite(tmp_path, monkeypatch):
    from test_cli import QUESTIONS, assert_one_line_error, run

    from specbench_cli import suite_files
    from specbench_cli.files import sha256_file

    out = tmp_path / "head"
    base = ["train-head", "--model", "tiny-random", "--out", str(out), "--device", "cpu"]
    for spec in ("spec-bench", "humaneval", "code-alpaca#x"):  # by name: refused before any download
        assert_one_line_error(run(*base, "--prompts", spec), "evaluation suite")
    # by file: a copy of a pinned question file under any name (here the test file stands in for it)
    monkeypatch.setattr(suite_files, "SPEC_BENCH_SHA256", sha256_file(QUESTIONS))
    assert_one_line_error(run(*base, "--prompts", str(QUESTIONS)), "evaluation suite 'spec-bench'")
    assert not out.exists()


def test_train_head_refuses_a_folder_of_another_target(tmp_path, head_dir):
    import shutil

    from test_cli import QUESTIONS, assert_one_line_error, run

    out = tmp_path / "head"
    shutil.copytree(head_dir, out)
    before = sorted(p.name for p in out.rglob("*"))
    args = ["train-head", "--model", "tiny-random-draft", "--prompts", str(QUESTIONS), "--out", str(out)]
    assert_one_line_error(run(*args, "--device", "cpu"), "trained for 'tiny-random'")
    assert sorted(p.name for p in out.rglob("*")) == before  # no answers generated into it


def test_train_head_cli_resumes_an_interrupted_folder(tmp_path):
    from test_cli import QUESTIONS, run

    out = tmp_path / "head"
    (out / "data" / "0123456789ab").mkdir(parents=True)  # answers begun, killed before the first epoch
    args = ["train-head", "--model", "tiny-random", "--prompts", str(QUESTIONS), "--out", str(out)]
    result = run(*args, "--device", "cpu", "--max-new-tokens", "8", "--epochs", "1", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and (out / "head.safetensors").is_file()


def test_sam_with_the_head_as_fallback_keeps_its_cache_in_step(tiny, head_dir):
    """SAMD[EAGLE2]: steps drafted by the automata skip the head; when it drafts again it has caught up
    on every token committed meanwhile (its level-1 log-probs equal the head run from scratch)."""
    from specbench_cli.drafters.sam import SamDecoding

    drafter = SamDecoding(MethodSetup(target=tiny, draft_head=head_dir, options={"fallback": "eagle2"}))
    assert isinstance(drafter.fallback, Eagle2) and drafter.needs_features
    log = []
    grow = drafter.fallback.grow

    def recording_grow(ctx):
        grown = grow(ctx)
        log.append((list(ctx.tokens), grown.root_logprobs.clone()))
        return grown

    drafter.fallback.grow = recording_grow
    engine = Engine(tiny, max_len=256)
    ar = Autoregressive(MethodSetup(target=tiny))
    rep = [11, 42, 250, 7, 93, 180]
    for prompt in (rep * 3 + [5, 17], [5, 17, 99, 4, 230, 8, 61]):
        gen = generate(engine, drafter, prompt, 40)
        assert gen.output_ids == generate(engine, ar, prompt, 40).output_ids
    stats = drafter.stats()
    assert stats["dynamic_steps"] > 0 and stats["fallback_steps"] > 0
    for tokens, logp in log:
        torch.testing.assert_close(
            logp, head_from_scratch(tiny, drafter.fallback.head, tokens, []), atol=1e-4, rtol=0
        )


def test_sam_eagle2_fallback_without_a_head_is_one_line(tmp_path):
    from test_cli import assert_one_line_error, eval_args, run

    out = tmp_path / "run"
    args = eval_args(out, "--methods", "ar,sam", "--method-opt", "sam.fallback=eagle2")
    assert_one_line_error(run(*args), "fallback=eagle2", "--draft-head")
    assert not out.exists()
