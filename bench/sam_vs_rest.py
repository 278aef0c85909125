"""SAM's static datastore against REST's on the same corpus: build time, memory, disk, lookups.

    python3 bench/sam_vs_rest.py                       # 1M, the corpus once (3.9M), 10M, 30M tokens
    python3 bench/sam_vs_rest.py --sizes 1e6 --queries 200

Writes bench/results/sam_vs_rest.json. The corpus and queries are rest_peer.py's (tokenized once into
its --work folder): the Python standard library + new_codealpaca token documents (smollm2-135m
tokenizer, vocab 49,152), repeated until each size; queries are contexts (<= 64 tokens) cut from the
held-out CodeAlpaca-2k answers, each with the 10 reference tokens that follow it.

Three builds, each in a fresh child process so that its peak RSS (ru_maxrss) is its own:
- `rest`: the suffix-array datastore (datastores/rest.py);
- `sam`: our array-based suffix automaton (datastores/automaton.py), frozen to CSR and saved;
- `sam-dict`: the same online construction with one Python object and dict per state, the way the
  official SAM-Decoding code stores it (written here for the comparison; smallest size only by default).
Lookups: REST's drafter (`Rest.propose`) vs the static automaton matched from scratch over the whole
context, and per token as the drafter does it (one `walk` call per committed token). "accepted" is
the longest prefix of the reference found in the draft (what greedy verification would accept if the
target reproduced the reference); SAM drafts from its corpus only when match - len_bias >= 5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import rest_peer  # noqa: E402  (the shared corpus, queries and REST helpers)

from specbench_cli.files import peak_rss_mb  # noqa: E402

RESULTS = REPO / "bench" / "results"
N_PREDICTS, LEN_BIAS, LEN_THRESHOLD = 40, 5, 5  # SAM-Decoding's defaults (drafters/sam.py)


# ----------------------------------------------------------------------------------------------------
# The official storage layout, for scale: one object per state, transitions in a dict


@dataclass
class DictState:
    next: dict[int, int] = field(default_factory=dict)
    link: int = -1
    length: int = 0
    first_end: int = -1


def build_dict_sam(docs) -> list[DictState]:
    states = [DictState()]
    last = 0
    pos = -1
    for doc in docs:
        for c in [*doc.tolist(), -1]:  # -1 ends each document, as in datastores/automaton.py
            pos += 1
            cur = len(states)
            states.append(DictState(length=states[last].length + 1, first_end=pos))
            p = last
            while p != -1 and c not in states[p].next:
                states[p].next[c] = cur
                p = states[p].link
            if p == -1:
                states[cur].link = 0
            else:
                q = states[p].next[c]
                if states[p].length + 1 == states[q].length:
                    states[cur].link = q
                else:
                    clone = len(states)
                    states.append(
                        DictState(
                            dict(states[q].next), states[q].link, states[p].length + 1, states[q].first_end
                        )
                    )
                    while p != -1 and states[p].next.get(c) == q:
                        states[p].next[c] = clone
                        p = states[p].link
                    states[q].link = states[cur].link = clone
            last = cur
    return states


# ----------------------------------------------------------------------------------------------------
# Children


def sam_lookups(path: Path, queries) -> dict:
    from specbench_cli.datastores.sam import SamDatastore

    auto = SamDatastore(path).automaton
    for ctx, _ in queries[:20]:  # warm-up: numba cache, page cache
        auto.match(ctx)
    scratch, per_token, lengths, drafted, accepted = [], [], [], 0, []
    for ctx, ref in queries:
        t = time.perf_counter()
        m = auto.match(ctx)
        draft = auto.continuation(m.end, N_PREDICTS - 1)
        scratch.append(time.perf_counter() - t)
        t = time.perf_counter()
        state, length = 0, 0
        for tok in ctx:
            state, length = auto.walk([tok], state, length)
        per_token.append((time.perf_counter() - t) / max(len(ctx), 1))
        lengths.append(m.length)
        if m.length - LEN_BIAS >= LEN_THRESHOLD and len(draft):
            drafted += 1
            accepted.append(rest_peer.accepted(rest_peer.tree_paths(_chain(draft)), ref))
    return {
        "match_from_scratch": rest_peer.percentiles(scratch),
        "walk_per_token": rest_peer.percentiles(per_token),
        "mean_match_length": round(float(np.mean(lengths)), 3),
        "drafted_fraction": round(drafted / len(queries), 3),
        "mean_accepted_when_drafted": round(float(np.mean(accepted)), 3) if accepted else None,
        "mean_accepted_per_query": round(float(np.sum(accepted)) / len(queries), 3),
    }


def rest_lookups(path: Path, queries) -> dict:
    _, lookup = rest_peer.ours_lookup(path)
    for ctx, _ in queries[:20]:
        lookup(ctx)
    times, accepted, drafted = [], [], 0
    for ctx, ref in queries:
        t = time.perf_counter()
        tree = lookup(ctx)
        times.append(time.perf_counter() - t)
        drafted += len(tree) > 0
        accepted.append(rest_peer.accepted(rest_peer.tree_paths(tree), ref))
    return {
        "propose": rest_peer.percentiles(times),
        "drafted_fraction": round(drafted / len(queries), 3),
        "mean_accepted_per_query": round(float(np.mean(accepted)), 3),
    }


def _chain(tokens):
    from specbench_cli.types import DraftTree

    return DraftTree.chain([int(t) for t in tokens])


def child(impl: str, n_tokens: int, out: Path, work: Path, n_queries: int) -> dict:
    meta = json.loads((work / "meta.json").read_text())
    start_rss = peak_rss_mb()
    if impl == "sam":  # load the compiled kernels first: LLVM's ~70 MB are not the automaton's
        from specbench_cli.datastores.automaton import build_automaton

        build_automaton(np.array([1, 2, 1, -1], dtype=np.int32)).freeze().match([1])
    base_rss = peak_rss_mb()
    docs = rest_peer.cycled_docs(work, n_tokens)
    row: dict = {"impl": impl, "tokens": n_tokens, "rss_before_build_mb": round(base_rss, 1)}
    row["jit_rss_mb"] = round(base_rss - start_rss, 1)
    t0 = time.perf_counter()
    if impl in ("rest", "sam"):
        from specbench_cli.datastores.base import BuildInput
        from specbench_cli.datastores.build import datastore_class, publish
        from specbench_cli.datastores.manifest import new_manifest

        store_class = datastore_class(impl)
        tok = {"name": rest_peer.MODEL, "fingerprint": meta["fingerprint"]}
        manifest = new_manifest(impl, tok, {"spec": "bench"}, {})
        b = publish(store_class, BuildInput(docs, store_class.options_class()), out, manifest, force=True)[
            "build"
        ]
        row["bytes_on_disk"] = b["bytes_on_disk"]
        if impl == "rest":
            row["sort_seconds"] = round(b["sort_seconds"], 2)
        else:
            row |= {"construct_seconds": round(b["construct_seconds"], 2), "automaton_mb": b["automaton_mb"]}
            row |= {"states": b["states"], "edges": b["edges"]}
    else:
        states = build_dict_sam(docs)
        row |= {"states": len(states), "edges": sum(len(s.next) for s in states)}
    row["build_seconds"] = round(time.perf_counter() - t0, 2)
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    row["build_rss_mb"] = round(row["peak_rss_mb"] - base_rss, 1)  # what the build itself added
    row["build_bytes_per_token"] = round(row["build_rss_mb"] * 2**20 / n_tokens, 1)
    if "bytes_on_disk" in row:
        row["disk_bytes_per_token"] = round(row["bytes_on_disk"] / n_tokens, 1)
    if n_queries and impl != "sam-dict":
        queries = rest_peer.make_queries(work, n_queries)
        row["lookups"] = (sam_lookups if impl == "sam" else rest_lookups)(out, queries)
    return row


def run_child(impl: str, n_tokens: int, out: Path, work: Path, n_queries: int) -> dict:
    cmd = [sys.executable, __file__, "child", impl, str(n_tokens), str(out), "--work", str(work)]
    done = subprocess.run(cmd + ["--queries", str(n_queries)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {impl} {n_tokens} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="run", choices=["run", "child"])
    ap.add_argument("args", nargs="*")
    ap.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "specbench-rest-bench"
    )
    ap.add_argument(
        "--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "specbench-sam-bench"
    )
    ap.add_argument("--sizes", default="1e6,full,1e7,3e7", help="tokens per build; full = the corpus once")
    ap.add_argument(
        "--dict-sizes", default="1e6", help="sizes for the dict-per-state build (slow, memory-heavy)"
    )
    ap.add_argument("--queries", type=int, default=500)
    a = ap.parse_args()
    if a.what == "child":
        impl, n, out = a.args
        print(json.dumps(child(impl, int(n), Path(out), a.work, a.queries)))
        return
    meta = rest_peer.prepare(a.work)
    corpus_tokens = sum(len(d) for f in ("stdlib.npz", "alpaca.npz") for d in rest_peer.load_docs(a.work / f))

    def size(text: str) -> int:  # "full" = the corpus once; larger sizes repeat its documents
        return corpus_tokens if text == "full" else int(float(text))

    sizes = [size(s) for s in a.sizes.split(",")]
    dict_sizes = {size(s) for s in a.dict_sizes.split(",") if s}
    rows = []
    for n in sizes:
        for impl in ("rest", "sam", "sam-dict"):
            if impl == "sam-dict" and n not in dict_sizes:
                continue
            out = a.out / f"{impl}-{n}"
            print(f"building {impl} at {n:,} tokens", file=sys.stderr, flush=True)
            rows.append(
                run_child(impl, n, out, a.work, a.queries) | {"corpus_passes": round(n / corpus_tokens, 2)}
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=False)
    result = {
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "corpus": "stdlib + new_codealpaca (instruction+output) token documents, repeated to size",
        "corpus_tokens": corpus_tokens,
        "tokenizer": f"{rest_peer.MODEL} (vocab {meta['vocab_size']:,})",
        "queries": f"{a.queries} contexts (<= 64 tokens) cut from CodeAlpaca-2k reference answers",
        "builds": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sam_vs_rest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
