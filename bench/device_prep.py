"""Getting questions and models onto an offline GPU machine (bench/README.md has the whole recipe).

    export   (here)   pick the questions and write them as Spec-Bench JSONL into a carried folder
    prepare  (there)  GGUF -> bf16 safetensors folder, once per machine (slow GGUF parsing off the clock)

Then the benchmark itself is `specbench eval --engine compiled --baselines hf-eager,hf-static ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from specbench_cli.types import SpecbenchError  # noqa: E402


def cmd_export(args: argparse.Namespace) -> None:
    from specbench_cli.suites import load_suite

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    for label, spec, limit in (
        ("spec-bench", f"spec-bench:{args.spec_bench}", args.spec_bench_limit),
        ("humaneval", "humaneval", args.humaneval_limit),
    ):
        if limit <= 0:
            continue
        suite = load_suite(spec, limit=limit)
        rows = [
            {"question_id": q.question_id, "category": q.category, "turns": list(q.turns)}
            for q in suite.questions
        ]
        path = out / f"{label}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sources[label] = {"source": suite.source, "sha256": suite.sha256, "questions": len(rows)}
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["category"]] = counts.get(r["category"], 0) + 1
        print(f"{path}: {len(rows)} questions {counts}")
    (out / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")


def cmd_prepare(args: argparse.Namespace) -> None:
    """A GGUF staged on the machine -> a bf16 safetensors folder that models.py loads in seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specbench_cli.files import sha256_file
    from specbench_cli.model_aliases import GGUF_MODELS

    alias, _, path = args.model.partition("=")
    gguf = Path(path)
    out = Path(args.to)
    start = time.perf_counter()
    sha = sha256_file(gguf)
    expected = GGUF_MODELS[alias].sha256 if alias in GGUF_MODELS else None
    if expected and sha != expected:
        raise SpecbenchError(f"{gguf}: sha256 {sha[:12]}... is not {alias}'s {expected[:12]}...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised already: drop the GGUF "quantizer" (transformers 5.17 refuses to
    # save a model that has one). The benchmark runs in bf16: casting now gives what it would cast.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {"alias": alias, "gguf_sha256": sha, "gguf_file": str(gguf), "dtype": "bfloat16"}
    (out / "specbench.json").write_text(json.dumps(marker, indent=2) + "\n")
    print(f"{alias}: {out} in {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write the benchmark questions as Spec-Bench JSONL (run here)")
    p.add_argument("--out", default=".benchdata")
    p.add_argument("--spec-bench", default="../shared/data/spec_bench/question.jsonl")
    p.add_argument("--spec-bench-limit", type=int, default=40)
    p.add_argument("--humaneval-limit", type=int, default=20)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("prepare", help="GGUF -> bf16 safetensors folder (run on the GPU machine)")
    p.add_argument("--model", required=True, help="ALIAS=PATH.gguf")
    p.add_argument("--to", required=True, help="output folder (point SPECBENCH_MODEL_<ALIAS> at it)")
    p.set_defaults(fn=cmd_prepare)

    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except SpecbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
