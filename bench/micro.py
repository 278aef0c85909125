"""Runner variants on random-weight models of the real shapes (no model files needed).

    python3 bench/micro.py --out $OUT/micro.json --shape qwen2.5-coder-1.5b          # on the GPU machine
    python3 bench/micro.py --out /tmp/micro.json --shape tiny --device cpu           # a CPU smoke run

Per shape: (1) in float32, the compiled runner (graphs, no torch.compile) against the eager runner:
max relative logit difference over trees of several sizes, and whether greedy decoding through it
equals eager `ar` (for `ar` and for random trees); (2) per runner variant (ATTENTION:BACKEND:COMPILE),
the median forward time per bucket size and `ar` tokens/s through the product's decode loop; (3) the
same model through our eager `ar` and transformers' `generate` (the `eval --baselines` code).
The benchmark itself is `specbench eval`; this measures the pieces behind the compiled engine's design.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from shapes import device_info, make_runner, random_loaded, resolve_device, time_forward, write_json


def check_runner(runner: Any, prompt_ids: list[int]) -> dict[str, Any]:
    """Compiled vs eager forwards of the same model on one tree and one single token.

    In bf16 the two differ by rounding (different kernels), so this bounds the difference rather than
    asserting equality; a broken kernel shows up as O(1) differences and disagreeing argmaxes.
    """
    import torch

    from specbench_cli.engine.runner import ModelRunner

    eager = ModelRunner(runner.model, runner.max_len)
    rng = random.Random(0)
    prompt = prompt_ids[: runner.max_len // 2]
    n = min(40, runner.buckets[-1])
    parents = [-1] + [rng.randint(0, i - 1) for i in range(1, n)]
    tokens = [rng.choice(prompt) for _ in range(n)]
    outs = []
    for r in (runner, eager):
        r.reset()
        r.forward(prompt, last_only=True)
        r.commit(list(range(len(prompt))))
        tree, _ = r.forward(tokens, parents)
        r.commit([0])
        single, _ = r.forward(tokens[1:2])
        outs.append(torch.cat([tree, single]))
        r.reset()
    a, b = outs
    rel = ((a - b).abs().max() / b.abs().max()).item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return {
        "max_rel_logit_diff": round(rel, 5),
        "top1_agreement": round(top1, 4),
        "ok": rel < 0.1 and top1 >= 0.8,
    }


def random_trees_drafter(loaded: Any, seed: int) -> Any:
    from specbench_cli.drafters.base import Drafter
    from specbench_cli.types import DraftTree, MethodSetup

    class RandomTrees(Drafter):
        """Trees of random sizes and shapes: exercises every bucket and the compaction."""

        name = "random-trees"

        def __init__(self, setup: MethodSetup):
            super().__init__(setup)
            self.rng = random.Random(seed)

        def propose(self, ctx: Any) -> DraftTree:
            n = min(self.rng.choice([0, 5, 15, 40, 100]), ctx.max_nodes)
            toks = [self.rng.choice(ctx.tokens) for _ in range(n)]
            return DraftTree(tuple(toks), tuple(self.rng.randint(-1, i - 1) for i in range(n)))

    return RandomTrees(MethodSetup(target=loaded))


def correctness(shape: str, device: str, max_len: int) -> dict[str, Any]:
    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.compiled import CompiledRunner
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.engine.runner import ModelRunner
    from specbench_cli.types import MethodSetup

    loaded = random_loaded(shape, "float32", device)
    model, vocab = loaded.model, min(1000, loaded.model.config.vocab_size)
    # Graphs without torch.compile: this checks the kernels and the graph logic in float32.
    eager, comp = ModelRunner(model, max_len), CompiledRunner(model, max_len, 128, compile_mode=None)
    rng = random.Random(0)
    prompt = [rng.randrange(vocab) for _ in range(min(300, max_len // 3))]
    for r in (eager, comp):
        r.forward(prompt)
        r.commit(list(range(len(prompt))))
    worst = 0.0
    for n in (1, 7, 16, 50, 129, 3):
        parents = [-1] + [rng.randint(0, i - 1) for i in range(1, n)]
        toks = [rng.randrange(vocab) for _ in range(n)]
        a, _ = comp.forward(toks, parents)
        b, _ = eager.forward(toks, parents)
        worst = max(worst, (a - b).abs().max().item() / b.abs().max().item())
        kept = [0] + ([n - 1] if parents[n - 1] == 0 else [])
        comp.commit(kept)
        eager.commit(kept)
    same = {}
    for name, drafter in (
        ("ar", Autoregressive(MethodSetup(target=loaded))),
        ("random-trees", random_trees_drafter(loaded, 1)),
    ):
        reference = Engine(loaded, max_len, 128, "eager")
        graphs = Engine(loaded, max_len, 128, "eager")
        graphs.runner = CompiledRunner(model, max_len, 128, compile_mode=None)
        ref = generate(reference, Autoregressive(MethodSetup(target=loaded)), prompt[:40], 64).output_ids
        same[name] = generate(graphs, drafter, prompt[:40], 64).output_ids == ref
    return {"fp32_max_rel_logit_diff": worst, "fp32_greedy_equal_to_eager_ar": same}


def variants(
    args: argparse.Namespace, shape: str, device: str, dtype: str, deadline: float
) -> dict[str, Any]:
    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.types import MethodSetup

    loaded = random_loaded(shape, dtype, device)
    rng = random.Random(1)
    prompt = [rng.randrange(min(1000, loaded.vocab_size)) for _ in range(200)]
    out: dict[str, Any] = {}
    for variant in args.variants.split(","):
        if time.perf_counter() > deadline:
            out[variant] = {"skipped": "time budget"}
            continue
        try:
            start = time.perf_counter()
            runner = make_runner(loaded, variant, args.max_len)
            runner.prepare()
            setup = time.perf_counter() - start
            check = check_runner(runner, prompt)
            context = min(1000, args.max_len - runner.buckets[-1] - 1)
            forward_ms = {str(s): time_forward(runner, s, context, args.reps, device) for s in runner.buckets}
            engine = Engine(loaded, args.max_len, 128, "eager")
            engine.runner = runner  # this variant instead of the default compiled runner
            ar = Autoregressive(MethodSetup(target=loaded))
            generate(engine, ar, prompt, 16)
            gen = generate(engine, ar, prompt, args.new_tokens)
            out[variant] = {
                "check_vs_eager": check,
                "compile_error": runner.compile_error,
                "setup_s": round(setup, 2),
                "forward_ms": forward_ms,
                "ar_tokens_per_s": round(gen.new_tokens / gen.wall_time, 1),
            }
        except Exception as err:  # one broken variant must not sink the others
            out[variant] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        print(f"{shape} {variant}: {out[variant]}", flush=True)
    return out


def baselines(args: argparse.Namespace, shape: str, device: str, dtype: str) -> dict[str, Any]:
    """Our eager `ar` and transformers' generate (the very code of `eval --baselines`) on one prompt."""
    from specbench_cli.baselines import BASELINES, Baseline
    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.types import MethodSetup

    loaded = random_loaded(shape, dtype, device)
    rng = random.Random(2)
    prompt = [rng.randrange(min(1000, loaded.vocab_size)) for _ in range(200)]
    engine = Engine(loaded, args.max_len, 128, "eager")
    ar = Autoregressive(MethodSetup(target=loaded))
    generate(engine, ar, prompt, 8)
    gen = generate(engine, ar, prompt, args.new_tokens)
    out: dict[str, Any] = {"ar_eager_tokens_per_s": round(gen.new_tokens / gen.wall_time, 1)}
    for name in BASELINES:
        try:
            baseline = Baseline(name, loaded, static_len=args.max_len)
            start = time.perf_counter()
            baseline.generate(prompt, args.new_tokens)  # compiles (hf-static on CUDA)
            baseline.generate(prompt[:150], args.new_tokens)  # and a second prompt length
            warm = time.perf_counter() - start
            gen = baseline.generate(prompt[:180], args.new_tokens)
            out[name] = {"warmup_s": round(warm, 2), "tokens_per_s": round(gen.new_tokens / gen.wall_time, 1)}
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        print(f"{shape} {name}: {out[name]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--shape", default="qwen2.5-coder-1.5b", help="comma list of shapes (bench/shapes.py)"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument(
        "--dtype", default="auto", help="of the timing runs (auto: bfloat16 on GPU, float32 on CPU)"
    )
    parser.add_argument(
        "--variants",
        default="tree:efficient:default,tree:efficient:eager,packed:efficient:eager,packed:cudnn:eager",
        help="ATTENTION:BACKEND:COMPILE_MODE list (COMPILE_MODE eager = no torch.compile)",
    )
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=20, help="timed forwards per bucket")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per timed generation")
    parser.add_argument("--time-budget", type=float, default=420, help="seconds; later variants are skipped")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)  # a busy 2-core box stalls 2-thread forwards at OpenMP barriers
    device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    if device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)  # eager paths: cuDNN re-plans per KV length
    result: dict[str, Any] = {"machine": device_info(), "device": device, "dtype": dtype, "shapes": {}}
    for shape in args.shape.split(","):
        res: dict[str, Any] = correctness(shape, device, args.max_len)
        result["shapes"][shape] = res
        print(f"{shape}: {res}", flush=True)
        res["variants"] = variants(args, shape, device, dtype, t0 + args.time_budget)
        write_json(args.out, result)
        res["baselines"] = baselines(args, shape, device, dtype)
        write_json(args.out, result)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
