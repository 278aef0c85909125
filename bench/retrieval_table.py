"""The retrieval comparison's table (issue 13): pld, rest, dresd and sam per suite, and DReSD over REST
beside the DReSD paper's claims, from the run folders of bench/retrieval_at_scale.sh.

    python3 bench/retrieval_table.py RUN [RUN ...] --out FILE.md [--drop SUITE/METHOD/QUESTION ...]

Each RUN holds the report's summary.json and bench/answer_times.py's answer_times.csv. The figures are
the report's (overall row of every suite). `--drop` leaves one answer out of a recomputed speedup
(with `ar`'s answer to the same question): for an answer whose time is not the method's, e.g. one
that compiled a graph on the clock; the report's own speedup stays beside it.

The DReSD paper (its abstract) claims over REST on the same aligned datastore +87% acceptance rate
(accepted / drafted tokens: our `accepted_per_depth`), +65% mean accepted tokens and +19% speed.
Writes FILE.md and FILE.json.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

PAPER = {"accepted_per_depth": 1.87, "mean_accepted_length": 1.65, "speedup": 1.19}
METHODS = ("ar", "pld", "rest", "dresd", "sam")
COLUMNS = ("mean_accepted_length", "acceptance_rate", "accepted_per_depth", "tokens_per_s", "speedup")
TIMES = ("t_draft_ms", "t_verify_ms", "t_other_ms")


def speedup_without(times: list[dict], suite: str, method: str, dropped: set[str]) -> float:
    """The report's speedup (ratio of totals over the questions both answered) without `dropped`."""

    def totals(m: str) -> dict[tuple[str, str], tuple[int, float]]:
        return {
            (r["question_id"], r["repeat"]): (int(r["new_tokens"]), float(r["wall_time"]))
            for r in times
            if r["suite"] == suite and r["method"] == m and r["question_id"] not in dropped
        }

    mine, base = totals(method), totals("ar")
    keys = mine.keys() & base.keys()
    rate = sum(mine[k][0] for k in keys) / sum(mine[k][1] for k in keys)
    return rate / (sum(base[k][0] for k in keys) / sum(base[k][1] for k in keys))


def table(runs: list[Path], drops: list[str]) -> dict:
    dropped: dict[tuple[str, str], set[str]] = defaultdict(set)
    for item in drops:
        suite, method, question = item.split("/")
        dropped[suite, method].add(question)
    suites = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        times = list(csv.DictReader((run / "answer_times.csv").open()))
        rows = [r for r in summary["rows"] if r["category"] == "overall" and r["method"] in METHODS]
        for suite in dict.fromkeys(r["suite"] for r in rows):
            entry = {"run": run.name, "suite": suite, "methods": {}}
            for r in (r for r in rows if r["suite"] == suite):
                cells = {c: r[c] for c in COLUMNS + TIMES} | {"questions": r["questions"]}
                gone = dropped.get((suite, r["method"]))
                if gone:
                    cells["speedup_dropped"] = speedup_without(times, suite, r["method"], gone)
                    cells["dropped"] = sorted(gone)
                entry["methods"][r["method"]] = cells
            dresd, rest = entry["methods"].get("dresd"), entry["methods"].get("rest")
            if dresd and rest:
                speed = dresd.get("speedup_dropped", dresd["speedup"])
                entry["dresd_over_rest"] = {
                    "accepted_per_depth": dresd["accepted_per_depth"] / rest["accepted_per_depth"],
                    "mean_accepted_length": dresd["mean_accepted_length"] / rest["mean_accepted_length"],
                    "speedup": speed / rest.get("speedup_dropped", rest["speedup"]),
                }
            suites.append(entry)
    return {"paper_dresd_over_rest": PAPER, "suites": suites}


def markdown(result: dict) -> str:
    def num(x, digits=2):
        return "–" if x is None else f"{x:.{digits}f}"

    out = ["| suite | method | questions | MAT | acceptance_rate | accepted_per_depth | tok/s | speedup | t_draft / t_verify / t_other ms |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in result["suites"]:
        for m, c in s["methods"].items():
            speed = f"{c['speedup']:.2f}x"
            if "speedup_dropped" in c:
                speed += f" ({c['speedup_dropped']:.2f}x without question {', '.join(c['dropped'])})"
            split = " / ".join(num(c[t]) for t in TIMES)
            out.append(
                f"| {s['suite']} | {m} | {c['questions']} | {num(c['mean_accepted_length'])} | "
                f"{num(c['acceptance_rate'], 3)} | {num(c['accepted_per_depth'], 3)} | "
                f"{num(c['tokens_per_s'], 1)} | {speed} | {split} |"
            )
    out += ["", "DReSD over REST (same aligned store; paper: x1.87 acceptance, x1.65 MAT, x1.19 speed):", ""]
    out += ["| suite | accepted_per_depth | MAT | speed |", "|---|---|---|---|"]
    for s in result["suites"]:
        if "dresd_over_rest" in s:
            r = s["dresd_over_rest"]
            out.append(
                f"| {s['suite']} | x{r['accepted_per_depth']:.2f} | x{r['mean_accepted_length']:.2f} | "
                f"x{r['speedup']:.2f} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="FILE.md (FILE.json beside it)")
    parser.add_argument("--drop", action="append", default=[], help="SUITE/METHOD/QUESTION_ID")
    args = parser.parse_args(argv)
    result = table(args.runs, args.drop)
    args.out.write_text(markdown(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(args.out.read_text())
    return result


if __name__ == "__main__":
    main()
