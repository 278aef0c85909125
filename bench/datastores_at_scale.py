"""Sparse and automaton datastores at scale: the installed packages' Python files as the corpus.

    python3 bench/datastores_at_scale.py --out bench/results/.../datastores_at_scale.json
    python3 bench/datastores_at_scale.py --tokens-limit 2e6 --sam-tokens 1e6 --out /tmp/small.json

Builds, each in a fresh child process so its peak RSS (ru_maxrss) is its own:
1. `rest`, chunked (`--chunk-tokens`), straight from the folder: the product's corpus source
   (`--corpus FOLDER --glob '**/*.py'`), its streaming tokenizer and the chunked writer, so the
   build's memory follows the chunk size while the whole corpus passes through it;
2. `rest` as one array over the same tokens (read back from the chunked store), to show what the
   chunks save, and that both give the same drafts;
3. `sam`, the static automaton over the first `--sam-tokens` tokens of the same stream, in shards
   of `--shard-tokens`, and `sam-one`, the same as one automaton (same matches, more build memory);
4. on request (`--kinds rest-chunked,rest-big`), `rest` at the product's default chunk size over
   the corpus repeated to `--big-rest-tokens` (500M), for memory and lookups at that size.

Lookups: `--queries` contexts cut from the standard library's sources (Python code that is not in
site-packages, so not in the stores), each the 64 tokens before a random point, with the 10 tokens
after it as the reference. REST: `Rest.propose` (longest match over all chunks + merged
continuations + trie); SAM: a from-scratch match over the context and a per-token walk.
Stores go under --work (git-excluded); only the JSON is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import rest_peer  # noqa: E402

from specbench_cli.files import peak_rss_mb  # noqa: E402

CONTEXT = 64  # tokens before the cut: SAM matches over all of them, REST over the last 16
REFERENCE = 10  # tokens after the cut that a draft is scored against


# ----------------------------------------------------------------------------------------------------
# Token documents


def limited(docs, limit: int, counter: dict) -> Iterator[np.ndarray]:
    """Documents until `limit` tokens have passed (the document that crosses it is the last); the
    time spent producing them (tokenizing, reading) is added to counter["seconds"]."""
    it = iter(docs)
    while counter["tokens"] < limit:
        t = time.perf_counter()
        doc = next(it, None)
        counter["seconds"] += time.perf_counter() - t
        if doc is None:
            return
        counter["tokens"] += len(doc)
        yield doc


def store_docs(path: Path) -> Iterator[np.ndarray]:
    """The documents of a built rest store, chunk by chunk (one chunk read into memory at a time)."""
    from specbench_cli.datastores.rest import SENTINEL, chunk_files

    manifest = json.loads((path / "manifest.json").read_text())
    for i in range(manifest["layout"].get("chunks", 1)):
        tokens = np.load(path / chunk_files(i)[0])
        ends = np.flatnonzero(tokens == SENTINEL)
        starts = np.concatenate([[0], ends[:-1] + 1])
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            yield tokens[s:e]
        del tokens


def make_queries(model: str, n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(context, reference) pairs from standard-library files, tokenized with the stores' tokenizer."""
    from specbench_cli.datastores.corpus import stdlib_files
    from specbench_cli.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    _, paths = stdlib_files()
    rng = np.random.default_rng(seed)
    out: list[tuple[list[int], list[int]]] = []
    for i in rng.permutation(len(paths)).tolist():
        if len(out) >= n:
            break
        try:
            ids = tokenizer(paths[i].read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)
        except (UnicodeDecodeError, OSError):
            continue
        ids = ids["input_ids"]
        if len(ids) < CONTEXT + REFERENCE:
            continue
        cut = int(rng.integers(CONTEXT, len(ids) - REFERENCE + 1))
        out.append((ids[cut - CONTEXT : cut], ids[cut : cut + REFERENCE]))
    return out


# ----------------------------------------------------------------------------------------------------
# Children: one build each


def build_child(kind: str, out: Path, a: argparse.Namespace) -> dict:
    from specbench_cli.datastores.automaton import build_automaton
    from specbench_cli.datastores.base import BuildInput
    from specbench_cli.datastores.build import publish, tokenizer_record
    from specbench_cli.datastores.manifest import new_manifest
    from specbench_cli.datastores.rest import RestDatastore, RestOptions
    from specbench_cli.datastores.sam import SamDatastore, SamOptions

    # Compile / load the kernels first: LLVM's memory is not the store's.
    build_automaton(np.array([1, 2, 1, -1], dtype=np.int32)).freeze().match([1])
    counter = {"tokens": 0, "seconds": 0.0}
    if kind == "rest-chunked":
        from rich.console import Console

        from specbench_cli.datastores.corpus import iter_corpus
        from specbench_cli.models import load_tokenizer

        tokenizer = load_tokenizer(a.model)
        tok_record = tokenizer_record(a.model, tokenizer)
        source = iter_corpus(str(a.corpus), {"glob": a.glob})
        corpus = source.to_manifest() | {"files": [], "file_count": len(source.files)}
        base_rss = peak_rss_mb()
        docs, _ = RestDatastore.documents(source, tokenizer, Console(stderr=True))
        store_class, opts, limit = (
            RestDatastore,
            RestOptions(chunk_tokens=int(a.chunk_tokens)),
            a.tokens_limit,
        )
    else:
        tok_record = json.loads((a.work / "rest-chunked" / "manifest.json").read_text())["tokenizer"]
        corpus = {"spec": "the rest-chunked store's documents"}
        base_rss = peak_rss_mb()
        docs = store_docs(a.work / "rest-chunked")
        if kind == "rest-one":
            store_class, opts, limit = RestDatastore, RestOptions(chunk_tokens=2**40), a.tokens_limit
        elif kind == "rest-big":  # the corpus repeated to --big-rest-tokens, default chunks
            docs = (d for _ in range(10**6) for d in store_docs(a.work / "rest-chunked"))
            store_class, opts, limit = RestDatastore, RestOptions(), a.big_rest_tokens
        else:
            shard = a.shard_tokens if kind == "sam" else 2**40
            store_class, opts, limit = SamDatastore, SamOptions(shard_tokens=shard), a.sam_tokens
    manifest = new_manifest(store_class.kind, tok_record, corpus, {})
    t0 = time.perf_counter()
    built = publish(store_class, BuildInput(limited(docs, limit, counter), opts), out, manifest, force=True)
    seconds = time.perf_counter() - t0
    b = built["build"]
    n = built["tokens"]
    row = {
        "kind": kind,
        "tokens": n,
        "documents": built["documents"],
        "build_seconds": round(seconds, 1),
        "input_seconds": round(counter["seconds"], 1),  # tokenizing (rest-chunked) or reading documents
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_build_mb": round(base_rss, 1),
        "bytes_on_disk": b["bytes_on_disk"],
        "disk_bytes_per_token": round(b["bytes_on_disk"] / n, 1),
    }
    row["build_rss_mb"] = round(row["peak_rss_mb"] - base_rss, 1)
    row["build_bytes_per_token"] = round(row["build_rss_mb"] * 2**20 / n, 1)
    if store_class is RestDatastore:
        row |= {"chunks": built["layout"]["chunks"], "chunk_tokens": b["chunk_tokens"]}
        row["sort_seconds"] = b["sort_seconds"]
    else:
        keep = ("construct_seconds", "freeze_seconds", "states", "edges", "automaton_mb")
        row |= {k: b[k] for k in keep} | {
            "shards": built["layout"]["shards"],
            "shard_tokens": b["shard_tokens"],
        }
        row |= {
            "live_bytes_per_token": b["live_bytes_per_token"],
            "stored_bytes_per_token": b["stored_bytes_per_token"],
        }
    if kind == "rest-chunked":
        row["corpus"] = {k: corpus[k] for k in ("spec", "description", "file_count")}
        row["tokens_per_second_tokenizing"] = round(n / max(counter["seconds"], 1e-9))
    return row


def lookup_child(kind: str, path: Path, a: argparse.Namespace) -> dict:
    queries = [tuple(q) for q in json.loads((a.work / "queries.json").read_text())]
    if kind == "sam":
        from sam_vs_rest import sam_lookups

        from specbench_cli.datastores.sam import SamDatastore

        auto = SamDatastore(path).automaton
        matches = [[m.length, m.end] for m in (auto.match(ctx) for ctx, _ in queries)]
        return sam_lookups(path, queries) | {"matches": matches}
    from sam_vs_rest import rest_lookups

    row = rest_lookups(path, queries)
    _, lookup = rest_peer.ours_lookup(path)
    row["trees"] = [[list(t.tokens), list(t.parents)] for t in (lookup(ctx) for ctx, _ in queries)]
    return row


def run_child(what: str, kind: str, path: Path, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, what, kind, str(path), "--work", str(a.work), "--corpus", str(a.corpus)]
    cmd += ["--glob", a.glob, "--model", a.model, "--chunk-tokens", str(a.chunk_tokens)]
    cmd += ["--tokens-limit", str(a.tokens_limit), "--sam-tokens", str(a.sam_tokens)]
    cmd += ["--shard-tokens", str(a.shard_tokens), "--big-rest-tokens", str(a.big_rest_tokens)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {what} {kind} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# The study


def same(pair: list[list], n: int, key: str) -> dict | None:
    """How many of n answers two stores agree on (None when one of the two was not built)."""
    if len(pair) != 2:
        return None
    return {key: sum(x == y for x, y in zip(*pair, strict=True)), "queries": n}


def number(text: str) -> int:
    return int(float(text))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="run", choices=["run", "build", "lookup"])
    ap.add_argument("kind", nargs="?")
    ap.add_argument("path", nargs="?", type=Path)
    ap.add_argument("--corpus", type=Path, default=Path(site.getsitepackages()[0]))
    ap.add_argument("--glob", default="**/*.py")
    ap.add_argument("--model", default=rest_peer.MODEL, help="its tokenizer (alias or folder)")
    ap.add_argument("--tokens-limit", type=number, default=10**12, help="stop reading the corpus here")
    ap.add_argument("--sam-tokens", type=number, default=50_000_000, help="tokens in the automaton")
    ap.add_argument("--chunk-tokens", type=number, default=1 << 25, help="rest --opt chunk_tokens")
    ap.add_argument("--shard-tokens", type=number, default=1 << 24, help="sam --opt shard_tokens")
    ap.add_argument("--big-rest-tokens", type=number, default=500_000_000, help="rest-big: repeat to this")
    ap.add_argument("--kinds", default="rest-chunked,rest-one,sam,sam-one", help="builds to run, in order")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--work", type=Path, default=REPO / ".stores" / "datastores-at-scale")
    ap.add_argument("--out", type=Path, help="the JSON to write")
    ap.add_argument("--keep-stores", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    a = parse(argv)
    if a.what != "run":
        child = build_child if a.what == "build" else lookup_child
        print(json.dumps(child(a.kind, a.path, a)))
        return None
    a.work.mkdir(parents=True, exist_ok=True)
    queries = make_queries(a.model, a.queries)
    (a.work / "queries.json").write_text(json.dumps(queries))
    rows = {}
    for kind in a.kinds.split(","):
        print(f"building {kind}", file=sys.stderr, flush=True)
        rows[kind] = run_child("build", kind, a.work / kind, a)
        rows[kind]["lookups"] = run_child("lookup", kind.split("-")[0], a.work / kind, a)
        print(
            json.dumps({k: v for k, v in rows[kind].items() if k != "lookups"}), file=sys.stderr, flush=True
        )
    trees = [rows[k]["lookups"].pop("trees") for k in ("rest-chunked", "rest-one") if k in rows]
    matches = [rows[k]["lookups"].pop("matches") for k in ("sam", "sam-one") if k in rows]
    rows.get("rest-big", {}).get("lookups", {}).pop("trees", None)
    result = {
        "machine": f"{os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, shared with other jobs",
        "corpus": f"{a.corpus} --glob '{a.glob}'",
        "tokenizer": a.model,
        "queries": f"{len(queries)} contexts of {CONTEXT} tokens (reference: the next {REFERENCE}) cut from "
        "standard-library sources, which are not in the stores",
        "chunked_equals_one_array": same(trees, len(queries), "same_trees"),
        "sharded_equals_one_automaton": same(matches, len(queries), "same_matches"),
        "builds": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not a.keep_stores:
        for kind in rows:
            subprocess.run(["rm", "-rf", str(a.work / kind)], check=False)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
