"""A drafter's host time per step, without a model: a run's `ar` answers replayed through its drafts.

    python3 bench/drafter_replay.py --run RUN --model qwen2.5-coder-1.5b \\
        --suite humaneval:.bd2/HumanEval-20.jsonl --suite jsonl:.bd2/spec-bench-48.jsonl \\
        --methods pld,suffix,sam --datastore sam=/tmp/sam15 --out /tmp/replay.json

On a GPU the drafting of retrieval methods runs on the host while the GPU waits, so its cost can be
measured anywhere, once the drafter sees the texts it sees in a real run. This study rebuilds every
turn's prompt from the suite files (the product's `build_prompt_ids`, the run's prompt format), takes
ar's output ids as what the target would choose, and runs each step as the decode loop does: the
drafter's `propose`, `sanitize`, the product's `verify` with the choices the target would make at
every input (the output token after the input's depth), the feedback, the drafter's `update`. It
times `propose` and `update` on the host; the model's forward is not run at all. Token Recycling's
matrix (also SAM's fallback) learns from a stand-in top-k: the target's choice, then the tokens that
follow it in the answer.

The replayed MAT is close to the run's where a method's output equals ar's, so the drafts are the
real ones; the times are this machine's, so compare methods and code versions on one machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes import device_info, write_json  # noqa: E402


def read_answers(run: Path, method: str = "ar") -> dict[tuple[str, Any], dict]:
    """(suite folder, question id) -> the first repeat's answer record of `method`."""
    out = {}
    for path in sorted(run.glob(f"answers/*/{method}.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            out.setdefault((path.parent.name, record["question_id"]), record)
    return out


def stand_in_topk(picks: list[int], following: list[int], k: int) -> Any:
    """(inputs, k) ids: each input's choice, then the answer's next tokens (a plausible top-k)."""
    import numpy as np

    rows = np.empty((len(picks), k), dtype=np.int64)
    for i, pick in enumerate(picks):
        rows[i, 0] = pick
        rows[i, 1:] = (following + [pick] * k)[: k - 1]
    return rows


def replay_turn(drafter: Any, prompt: list[int], output: list[int], vocab_size: int) -> dict:
    """One turn: reset, then steps until ar's output is committed. Returns per-step host times."""
    import numpy as np

    from specbench_cli.engine.decode import DEFAULT_MAX_NODES, sanitize
    from specbench_cli.engine.verifier import verify
    from specbench_cli.types import DraftContext, StepFeedback

    k = getattr(drafter, "needs_node_topk", 0)
    sequence = prompt + output
    t0 = time.perf_counter()
    drafter.reset(list(prompt))
    reset_s = time.perf_counter() - t0
    tokens = prompt + output[:1]  # the first root
    propose_s, update_s, committed_per_step = [], [], []
    context = np.asarray(sequence, dtype=np.int64)  # the decode loop's token buffer, as drafters read it
    context.flags.writeable = False
    while len(tokens) < len(sequence):
        ctx = DraftContext(tokens=tokens, max_nodes=DEFAULT_MAX_NODES, token_array=context[: len(tokens)])
        t0 = time.perf_counter()
        tree = drafter.propose(ctx)
        propose_s.append(time.perf_counter() - t0)
        tree = sanitize(tree, vocab_size, DEFAULT_MAX_NODES)
        start = len(tokens)  # input at depth d predicts sequence[start + d]
        depths = [0, *tree.depths()]
        picks = [sequence[start + d] if start + d < len(sequence) else 0 for d in depths]
        verdict = verify(tree, None, picks=picks)
        committed = [tree.tokens[n] for n in verdict.accepted_nodes] + [verdict.bonus]
        committed = committed[: len(sequence) - start]
        tokens = tokens + committed
        node_topk = None
        if k:
            node_topk = stand_in_topk(picks, sequence[start + 1 : start + k], k)
        feedback = StepFeedback(tree, verdict.accepted_nodes, committed, tokens, node_topk)
        t0 = time.perf_counter()
        drafter.update(feedback)
        update_s.append(time.perf_counter() - t0)
        committed_per_step.append(len(committed))
    drafter.finish_answer(list(output))
    return {"reset_s": reset_s, "propose_s": propose_s, "update_s": update_s, "committed": committed_per_step}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a run folder with ar's answers (output_ids)")
    parser.add_argument("--model", required=True, help="the run's model (only its tokenizer is loaded)")
    parser.add_argument("--suite", action="append", required=True, help="the run's suite specs, local paths")
    parser.add_argument("--methods", default="pld,suffix,sam,recycle")
    parser.add_argument("--datastore", action="append", default=[], help="KIND=DIR, e.g. sam=/tmp/sam15")
    parser.add_argument("--option", action="append", default=[], help="METHOD.KEY=VALUE")
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="timed passes over the questions (after one untimed); the best is kept",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from specbench_cli.models import load_tokenizer
    from specbench_cli.prompts import build_prompt_ids
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.suites import load_suite
    from specbench_cli.types import MethodSetup

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    tokenizer = load_tokenizer(args.model)
    vocab_size = len(tokenizer)
    answers = read_answers(run)
    turns = []  # (prompt ids, ar's output ids) in run order
    for spec in args.suite:
        suite = load_suite(spec)
        for q in suite.questions:
            record = answers.get((suite.name, q.question_id))
            if record is None:
                continue
            choice = record["choices"][0]
            for t, output in enumerate(choice["output_ids"]):
                prompt = build_prompt_ids(
                    tokenizer, list(q.turns[: t + 1]), choice["turns"][:t], config["prompt_format"]
                )
                turns.append((prompt, list(output)))
    if not turns:
        raise SystemExit(f"no answer of {run} matches the suites given")
    datastores = dict(item.split("=", 1) for item in args.datastore)
    result: dict[str, Any] = {"study": "drafter_replay", "machine": device_info(), "run": str(run)}
    result |= {"turns": len(turns), "passes": args.passes, "datastores": datastores, "methods": {}}
    for method in args.methods.split(","):
        options = {}
        for item in args.option:
            key, value = item.split("=", 1)
            if key.startswith(method + "."):
                options[key[len(method) + 1 :]] = value
        setup = MethodSetup(
            target=SimpleNamespace(vocab_size=vocab_size, eos_ids=[]),
            datastores={kind: Path(path) for kind, path in datastores.items()},
            options=options,
        )
        drafter = DRAFTERS.get(method)(setup)
        passes = []  # per timed pass: (propose seconds per step, update seconds per step)
        for p in range(args.passes + 1):  # the first pass warms caches and compiles numba kernels
            drafter.start_run()
            propose, update, committed = [], [], []
            for prompt, output in turns:
                got = replay_turn(drafter, prompt, output, vocab_size)
                propose += got["propose_s"]
                update += got["update_s"]
                committed += got["committed"]
            if p:
                passes.append((statistics.fmean(propose), statistics.fmean(update)))
        # The best pass: on a shared machine the other passes only add the neighbours' noise.
        best = min(passes, key=lambda pair: pair[0] + pair[1])
        result["methods"][method] = {
            "options": options,
            "steps": len(propose),
            "mean_committed": sum(committed) / len(propose),
            "propose_us": best[0] * 1e6,
            "update_us": best[1] * 1e6,
            "passes_us": [[round(a * 1e6, 2), round(b * 1e6, 2)] for a, b in passes],
        }
        row = result["methods"][method]
        print(f"{method:10s} steps {row['steps']:6d}  committed/step {row['mean_committed']:.2f}  propose "
              f"{row['propose_us']:7.1f} us  update {row['update_us']:6.1f} us (best of {len(passes)} passes: "
              f"{row['passes_us']})", flush=True)  # fmt: skip
    write_json(args.out, result)


if __name__ == "__main__":
    main()
