"""DReSD's dense datastore: the target's own hidden states as keys, the next tokens as values.

    specbench build-index --method dresd --model M --corpus SPEC --out DIR

Recipe (DReSD's official code, huawei-noah/HEBO: embed_data.py, pca.py, index.py): run the target
over every corpus document with teacher forcing, truncated to 1024 tokens (documents packed whole
into rows of that width, each attending only to itself: key_extraction.py); for each position i but the
last, the key is the hidden state at i (final layer by default) and the value is the next 20 tokens,
padded with -1 past the document's end so a continuation never runs into the next document. Keys are
z-scored per dimension, projected with PCA to 64 dimensions and L2-normalised (inner product = cosine).
The scaling and PCA are fitted on the first 1M keys (documents are taken in a seeded random order).

Layout of a datastore folder:
    keys.npy            float16 (N, dim): the normalised, projected keys (DReSD stores fp16 too)
    values.npy          int32 (N, 20): next tokens of each key, -1 = past the document end
    transform.safetensors   mean (H,), std (H,), components (dim, H): the fitted scaling and PCA
    index.faiss         FAISS index over keys.npy (ids = rows), METRIC_INNER_PRODUCT (builds with faiss)
    ivf_centroids.npy, ivf_ids.npy, ivf_offsets.npy   an IVF index's lists, readable by torch
    recall_queries.npy  float32 held-out keys the IVF recall was measured on (IVF stores only)
    manifest.json       see manifest.py, plus model (with its weights fingerprint), layer, dim, index,
                        vectors, recall, self-retrieval

The index is exact (Flat) up to `flat_max` keys (1M), IVF above, its recall@10 against exact search
measured at build time on held-out keys. The scaling + PCA is pca.py (fitted on the device of the
forward), the index dense_search.py (faiss where installed, torch otherwise: torch_index.py). A store
is tied to the model whose hidden states it holds: another tokenizer, hidden size or weights
fingerprint is refused on open.

Search at eval time (DresdDatastore.search) goes through faiss-gpu when it is installed and the target is
on a GPU, else torch (exact or IVF) on that GPU; on the CPU faiss-cpu, else torch; `backend` says
which. `mmap=True` memory-maps the store instead of reading it into RAM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..options import option
from ..types import LoadedModel, SpecbenchError
from .base import BuildInput, Datastore
from .dense_search import BACKENDS, DenseSearch, build_search, check_factory, is_exact
from .faiss_index import auto_index_string
from .key_extraction import check_layer, hidden_batches
from .pca import KeyTransform, MomentAccumulator
from .torch_index import ivf_problem

KEYS_FILE = "keys.npy"
VALUES_FILE = "values.npy"
TRANSFORM_FILE = "transform.safetensors"

VALUE_LEN = 20  # DReSD's --n_len: tokens stored per key (drafts use 1 + 10 of them)
PAD = -1  # value slots past the end of a document
MAX_LENGTH = 1024  # DReSD truncates every document to this many tokens
PCA_SAMPLE = 1_000_000  # keys the scaling and PCA are fitted on (DReSD: ~1M)
RECALL_QUERIES = 1000  # held-out keys used to measure the ANN index's recall
FLAT_MAX = 1_000_000  # auto index: exact below, IVF above (exact search costs O(N) per step)


@dataclass
class DresdOptions:
    layer: int = option(
        -1, "hidden_states index used as key: -1 = the final layer (after the norm)", "DReSD embed_data.py"
    )
    dim: int = option(64, "PCA dimensions of a key", "DReSD pca.py", minimum=1)
    index: str = option(
        "auto",
        "FAISS factory string, or auto: Flat up to flat_max keys, else IVF(5*sqrt N),Flat",
        "DReSD index.py",
    )
    flat_max: int = option(
        FLAT_MAX, "auto index: exact search up to this many keys, IVF above", "ours", minimum=1
    )
    nprobe: int = option(
        250, "IVF cells searched (recorded as the store's default)", "DReSD index.py", minimum=1
    )
    max_length: int = option(MAX_LENGTH, "tokens kept per document", "DReSD embed_data.py", minimum=2)
    pca_sample: int = option(PCA_SAMPLE, "keys the scaling and PCA are fitted on", "DReSD pca.py", minimum=2)
    seed: int = option(0, "seed of the document order, held-out and training samples")


# ----------------------------------------------------------------------------------------------------
# Reading a built store


class DresdDatastore(Datastore):
    """A built dresd datastore: values memory-mapped, transform and index loaded, search backend chosen."""

    kind = "dresd"
    options_class = DresdOptions
    needs_model = True

    def __init__(
        self,
        path: Path,
        target: LoadedModel,
        backend: str = "auto",
        nprobe: int | None = None,
        k: int = 50,
        mmap: bool = False,
    ):
        if backend not in BACKENDS:
            raise SpecbenchError(f"unknown dresd backend '{backend}'; choose from: {', '.join(BACKENDS)}")
        super().__init__(path)  # manifest, checksums, arrays, validation
        check_model(self.manifest, target, self.path)
        self.k = k
        self.device = target.model.get_output_embeddings().weight.device
        self.query_transform = self.transform.to_torch(self.device)
        self.index = DenseSearch(self.path, self.keys, self.manifest, backend, nprobe, k, self.device, mmap)
        self.backend, self.search_params = self.index.backend, self.index.params

    def load(self) -> None:
        self.values = np.load(self.path / VALUES_FILE, mmap_mode="r")
        self.keys = np.load(self.path / KEYS_FILE, mmap_mode="r")
        self.transform = KeyTransform.load(self.path / TRANSFORM_FILE)

    def validate(self) -> None:
        self.expect_array(KEYS_FILE, self.keys, (np.float16,), 2)
        self.expect_array(VALUES_FILE, self.values, (np.int32,), 2)
        if len(self.values) != len(self.keys) or self.keys.shape[1] != self.transform.dim:
            raise self.refuse(f"{KEYS_FILE}, {VALUES_FILE} and {TRANSFORM_FILE} disagree in shape")
        vocab = (self.manifest.get("tokenizer") or {}).get("vocab_size") or 2**31 - 1
        self.expect_range(VALUES_FILE, self.values, PAD, vocab)
        hidden = (self.manifest.get("model") or {}).get("hidden_size")
        t = self.transform
        if t.mean.shape != (hidden,) or t.std.shape != (hidden,) or t.components.shape != (t.dim, hidden):
            raise self.refuse(f"{TRANSFORM_FILE} does not fit hidden size {hidden}")
        if not all(np.isfinite(a).all() for a in (t.mean, t.std, t.components)) or (t.std <= 0).any():
            raise self.refuse(f"{TRANSFORM_FILE} holds non-finite values or a zero scale")
        problem = ivf_problem(self.path, len(self.keys), self.keys.shape[1])
        if problem:
            raise self.refuse(problem)
        for start in range(0, len(self.keys), 1 << 20):
            if not np.isfinite(np.asarray(self.keys[start : start + (1 << 20)])).all():
                raise self.refuse(f"{KEYS_FILE} holds non-finite values")

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def check_target(cls, loaded: LoadedModel, options: DresdOptions) -> None:
        check_layer(loaded, options.layer)
        check_factory(options.index)
        hidden = loaded.model.config.get_text_config().hidden_size
        if options.dim > hidden:
            raise SpecbenchError(
                f"dresd option dim={options.dim} exceeds {loaded.name}'s hidden size {hidden}"
            )

    @classmethod
    def documents(cls, source, tokenizer, console) -> tuple[list[np.ndarray], str]:
        return corpus_documents(source, tokenizer, console)

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        return write_store(build, folder)

    @classmethod
    def summary(cls, m: dict) -> str:
        return (
            f"dresd datastore: {m['vectors']:,} keys of dim {m['dim']} from {m['documents']:,} documents "
            f"({m['build']['tokens_per_s']:,.0f} tok/s forward), index {m['index']}, "
            f"recall@10 {m['recall'].get('at_10')}, self-retrieval {m['self_retrieval']:.3f}, "
            f"{m['build']['bytes_on_disk'] / 2**20:,.1f} MiB, {m['build']['seconds']:.1f} s"
        )

    def search(self, hidden: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids of the k keys nearest to one hidden state (a torch tensor, shape (H,) or (1, H))."""
        import torch

        with torch.inference_mode():
            return self.index.search_raw(hidden, min(k or self.k, len(self)), self.query_transform)


def check_model(manifest: dict, target: LoadedModel, path: Path) -> None:
    """Refuse a store whose keys come from another model or whose values from another tokenizer.

    The hidden size catches most mix-ups with a clear message; the weights fingerprint catches the
    rest (another model, or a fine-tune, of the same shape gives other hidden states).
    """
    from ..models import tokenizer_fingerprint, weights_fingerprint

    tok = manifest.get("tokenizer") or {}
    if tok.get("fingerprint") != tokenizer_fingerprint(target.tokenizer):
        raise SpecbenchError(
            f"datastore {path} was built with the tokenizer of '{tok.get('name')}', which differs from the "
            f"model's ({target.name}); rebuild it with this --model"
        )
    built = manifest.get("model") or {}
    hidden = target.model.config.get_text_config().hidden_size
    if built.get("hidden_size") != hidden:
        raise SpecbenchError(
            f"datastore {path} holds hidden states of size {built.get('hidden_size')} from '{built.get('name')}', "
            f"but {target.name} has size {hidden}; rebuild it with this --model"
        )
    weights = weights_fingerprint(target)
    stored = str(built.get("weights_fingerprint"))
    if stored != weights:
        # Sampled fingerprints (models without known weight files) changed on 2026-12-03, when their
        # sampled positions moved to integer arithmetic: a store that old is refused for that reason too.
        older = (
            " or was built before 2026-12-03, when sampled fingerprints changed;"
            if stored.startswith("sample:")
            else ";"
        )
        raise SpecbenchError(
            f"datastore {path} holds hidden states of '{built.get('name')}' (weights {stored[:12]}), not of "
            f"{target.name}'s weights ({weights[:12]}){older} rebuild it with this --model"
        )


# ----------------------------------------------------------------------------------------------------
# Building


def sample_on_device(device: Any, nbytes: int) -> bool:
    """Whether the PCA sample (`nbytes`) is kept on the forward's device rather than on disk: on a GPU
    with room to spare (a quarter of its free memory at most, so the forwards keep theirs)."""
    if device.type != "cuda":
        return False
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def next_token_values(doc: np.ndarray, length: int = VALUE_LEN) -> np.ndarray:
    """(len(doc) - 1, length) int32: row i holds doc[i+1 : i+1+length], padded with PAD past the end."""
    padded = np.concatenate([np.asarray(doc, dtype=np.int32), np.full(length, PAD, dtype=np.int32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded[1:], length)
    return np.ascontiguousarray(windows[: len(doc) - 1])


class KeyWriter:
    """Writes projected keys, which arrive in global position order, to their stored row or aside
    (held-out positions, kept in memory as recall queries)."""

    def __init__(self, keys: np.ndarray, heldout: np.ndarray):
        self.keys, self.heldout = keys, heldout
        self.held = np.zeros((int(heldout.sum()), keys.shape[1]), dtype=np.float32)
        self.stored = self.held_rows = 0

    def write(self, projected: np.ndarray, rows: np.ndarray) -> None:
        aside = self.heldout[rows]
        kept = projected[~aside]
        self.keys[self.stored : self.stored + len(kept)] = kept.astype(np.float16)
        self.stored += len(kept)
        self.held[self.held_rows : self.held_rows + int(aside.sum())] = projected[aside]
        self.held_rows += int(aside.sum())


def write_store(build: BuildInput, folder: Path) -> dict:
    """Run the model over the token documents and write keys, values, transform and index into `folder`.

    The keys of the first `pca_sample` positions are kept raw until the scaling and PCA are fitted on
    them (on a GPU in the model's dtype, 3 GB for 1M keys of a 1.5B; elsewhere float32 on disk); later
    keys are projected as they come, so memory stays bounded by the batch.
    """
    import torch
    from rich.console import Console

    from ..models import weights_fingerprint

    loaded, opts = build.loaded, build.options
    if loaded is None:
        raise SpecbenchError("a dresd datastore is built from the target's hidden states: load the model")
    console = build.console or Console(stderr=True)
    docs = list(build.docs)
    truncated = sum(1 for d in docs if len(d) > opts.max_length)
    docs = [np.asarray(d[: opts.max_length], dtype=np.int64) for d in docs]
    docs = [d for d in docs if len(d) >= 2]
    n_keys = sum(len(d) - 1 for d in docs)
    if n_keys < 2:
        raise SpecbenchError("the corpus gave fewer than 2 positions with a next token: nothing to index")
    hidden_size = loaded.model.config.get_text_config().hidden_size
    factory = auto_index_string(n_keys, opts.flat_max) if opts.index == "auto" else opts.index
    exact = is_exact(factory)

    # Held-out positions measure the ANN index's recall on queries it has not stored; an exact index
    # has recall 1 by construction and keeps every position.
    rng = np.random.default_rng(opts.seed + 1)
    n_heldout = 0 if exact else min(RECALL_QUERIES, n_keys // 100)
    heldout = np.zeros(n_keys, dtype=bool)
    heldout[rng.choice(n_keys, n_heldout, replace=False)] = True
    n_stored = n_keys - n_heldout

    device = next(loaded.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    keys = np.lib.format.open_memmap(
        folder / KEYS_FILE, mode="w+", dtype=np.float16, shape=(n_stored, opts.dim)
    )
    values = np.lib.format.open_memmap(
        folder / VALUES_FILE, mode="w+", dtype=np.int32, shape=(n_stored, VALUE_LEN)
    )
    writer = KeyWriter(keys, heldout)
    sample_cap = min(opts.pca_sample, n_keys)
    # The raw sample stays on the GPU: written to disk it was 6 GB of float32 for 1M keys of a 1.5B,
    # written and read back inside the timed key pass (76k tokens/s on an H200 against the forwards'
    # 140k, 2026-12-03). bf16 -> float32 is exact, so the projected keys are the same either way.
    model_dtype = next(loaded.model.parameters()).dtype
    on_device = sample_on_device(device, sample_cap * hidden_size * model_dtype.itemsize)
    if on_device:
        raw = torch.empty((sample_cap, hidden_size), dtype=model_dtype, device=device)
    else:
        raw = np.lib.format.open_memmap(
            folder / "sample.npy", mode="w+", dtype=np.float32, shape=(sample_cap, hidden_size)
        )
    moments = MomentAccumulator(hidden_size, device)
    transform: KeyTransform | None = None
    row = n_sampled = n_values = 0  # next global position, keys in the PCA sample, value rows written

    t_forward = time.perf_counter()
    # Rows as wide as DReSD's documents may be (short documents share a row), or the whole corpus if shorter.
    row_tokens = max(max(len(d) for d in docs), min(opts.max_length, sum(len(d) for d in docs)))
    batches = hidden_batches(loaded, docs, opts.layer, build.batch_size, opts.seed, console, row_tokens)
    for batch, states in batches:
        # One forward's keys at once, documents in order: a copy to the host per forward, not per
        # document (12,008 documents cost ~36k small synchronising copies on the H200 run of 2026-12-03).
        h = torch.cat(states)
        rows = np.arange(row, row + len(h))
        row += len(h)
        # Values are known from the tokens alone; they follow the stored-key order.
        keep = ~heldout[rows]
        values[n_values : n_values + int(keep.sum())] = np.concatenate(
            [next_token_values(docs[d]) for d in batch]
        )[keep]
        n_values += int(keep.sum())
        take = min(len(h), sample_cap - n_sampled) if transform is None else 0
        if take:
            moments.add(h[:take])
            raw[n_sampled : n_sampled + take] = h[:take] if on_device else h[:take].float().cpu().numpy()
            n_sampled += take
            if n_sampled == sample_cap:  # sample complete: fit, then project it (rows 0..cap-1)
                transform = moments.fit(opts.dim)
                query_tf = transform.to_torch(device)
                for start in range(0, sample_cap, 1 << 15):
                    rows_raw = raw[start : start + (1 << 15)]
                    chunk = (
                        rows_raw.float() if on_device else torch.from_numpy(np.asarray(rows_raw)).to(device)
                    )
                    writer.write(query_tf(chunk).cpu().numpy(), np.arange(start, start + len(chunk)))
        if take < len(h):
            writer.write(query_tf(h[take:]).cpu().numpy(), rows[take:])
    t_forward = time.perf_counter() - t_forward
    if transform is None or not writer.stored == n_values == n_stored or writer.held_rows != n_heldout:
        raise RuntimeError("dresd build: key and value counts disagree (a bug)")
    keys.flush()
    values.flush()
    del raw, keys, values
    if not on_device:
        (folder / "sample.npy").unlink()
    transform.save(folder / TRANSFORM_FILE)

    keys_r = np.load(folder / KEYS_FILE, mmap_mode="r")
    index = build_search(folder, keys_r, factory, writer.held, opts.nprobe, opts.seed, device, console)
    n_tokens = int(sum(len(d) for d in docs))
    return {
        "tokens": n_tokens,
        "documents": len(docs),
        "vectors": n_stored,
        "model": {
            "name": loaded.name,
            "sha256": loaded.sha256,
            "weights_fingerprint": weights_fingerprint(loaded),
            "hidden_size": hidden_size,
            "num_layers": loaded.model.config.get_text_config().num_hidden_layers,
            "dtype": loaded.dtype,
            "device": str(device),
        },
        "layer": opts.layer,
        "dim": opts.dim,
        **{k: v for k, v in index.items() if k != "index_seconds"},
        "value_len": VALUE_LEN,
        "pad": PAD,
        "explained_variance": round(transform.explained_variance, 4),
        "pca_fitted_on": n_sampled,
        "build": {
            "forward_seconds": round(t_forward, 3),
            "index_seconds": index["index_seconds"],
            "rows_per_batch": build.batch_size,
            "row_tokens": row_tokens,
            "tokens_per_s": round(n_tokens / max(t_forward, 1e-9), 1),
            "truncated_documents": truncated,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda"
            else None,
        },
    }


def corpus_documents(source, tokenizer, console) -> tuple[list[np.ndarray], str]:
    """Token documents of a corpus source, and how they were formed (for the manifest).

    A `generate:` corpus gives prompt + answer: the prompt exactly as `eval` builds it (the corpus's
    --prompt-format: chat template, or "Question: ...\\nAnswer:\\n"),
    then the model's answer, so each stored key saw the same kind of context a query will see (DReSD's
    "Question: ...\\nAnswer:\\n" + response). Other corpora are their plain texts.
    """
    from ..prompts import build_prompt_ids
    from .corpus import tokenize_documents

    if source.kind == "generate" and source.records:
        answers = {(r["id"], r["turn"]): r["answer"] for r in source.records}
        docs = []
        for r in source.records:
            prior = [answers[(r["id"], t)] for t in range(r["turn"])]
            prompt = build_prompt_ids(tokenizer, list(r["turns"]), prior, source.prompt_format)
            answer = tokenizer(r["answer"], add_special_tokens=False)["input_ids"]
            docs.append(np.asarray(prompt + list(answer), dtype=np.int64))
        return docs, f"{source.prompt_format} prompt + generated answer"
    docs = list(tokenize_documents(source.texts(), tokenizer, total=source.documents, console=console))
    return docs, "corpus text"
