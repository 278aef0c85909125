"""Prompt lookup's per-step cost on the host: `find_candidate` over contexts of several lengths.

    python3 bench/pld_lookup.py --out bench/results/X/pld_lookup.json [--lengths 300,1000,2000]

pld's drafting is on the clock of every step (`t_draft`), beside a ~2 ms target forward on an H200,
so tens of microseconds matter. Contexts are random tokens (no match: every n-gram size is searched,
the worst case) and, per length, a context that repeats itself (an early match). Also timed: turning
the decode loop's token list into an array, which drafters no longer do (`DraftContext.array()`).
The JSON records the `specbench_cli` it imported, so runs from two checkouts can be compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import specbench_cli  # noqa: E402
from specbench_cli.drafters.pld import find_candidate  # noqa: E402


def per_call_us(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lengths", default="300,1000,2000")
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        tokens = [rng.randrange(5000) for _ in range(length)]
        array = np.asarray(tokens, dtype=np.int64)
        repeating = np.asarray((tokens[:50] * (length // 50 + 1))[:length], dtype=np.int64)
        rows.append(
            {
                "context_tokens": length,
                "lookup_no_match_us": per_call_us(lambda a=array: find_candidate(a), args.reps),
                "lookup_early_match_us": per_call_us(lambda a=repeating: find_candidate(a), args.reps),
                "list_to_array_us": per_call_us(lambda t=tokens: np.asarray(t, dtype=np.int64), args.reps),
            }
        )
    result = {
        "study": "pld_lookup",
        "specbench_cli": str(Path(specbench_cli.__file__).parent),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "reps": args.reps,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(
            f"{r['context_tokens']:>6} tokens: lookup {r['lookup_no_match_us']:.1f} us (no match), "
            f"{r['lookup_early_match_us']:.1f} us (early match); list -> array {r['list_to_array_us']:.1f} us"
        )
    return result


if __name__ == "__main__":
    main()
