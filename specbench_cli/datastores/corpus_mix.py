"""`--corpus generate:A,B,...`: one aligned corpus from several prompt sources.

An aligned store for several domains (DReSD's ID store, SAM's static corpus) wants the target's
answers to all of their prompts, e.g. GSM8K's training questions and CodeAlpaca's instructions.
Each source is generated (and cached) on its own by generate.py, exactly as `generate:A` alone would
be, so adding a source reuses the answers already made; this module only joins the results.

The joined source keeps every part's files (answers and prompt file, with their sha256) and every
part's suite label, so the overlap check refuses the store for any suite one of its parts holds.
Record ids get their part's name in front: "0" of GSM8K and "0" of CodeAlpaca stay two prompts.
"""

from __future__ import annotations

from itertools import chain

from .corpus import CorpusSource, combined_sha256

# Joins the parts' suite labels in the manifest; suite labels never hold it (suites._safe_label),
# so manifest.suite_overlap can split it again.
SUITE_JOIN = "+"


def split_targets(targets: str) -> list[str]:
    """`A,B` -> ["A", "B"]: the sources of one generate: corpus, in order, each given once."""
    from ..types import SpecbenchError

    parts = [t.strip() for t in targets.split(",")]
    if any(not t for t in parts):
        raise SpecbenchError(f"generate:{targets} has an empty source; write generate:A,B")
    if len(set(parts)) != len(parts):
        raise SpecbenchError(f"generate:{targets} lists a source twice")
    return parts


def join_generated(spec: str, parts: list[CorpusSource]) -> CorpusSource:
    """One `generate` CorpusSource holding every part's records, files and suite labels."""
    records = [
        r | {"id": f"{part.suite}/{r['id']}"} for part in parts for r in part.records
    ]  # ids unique across parts
    files = [f for part in parts for f in part.files]
    return CorpusSource(
        spec=spec,
        kind="generate",
        description="; ".join(part.description for part in parts),
        sha256=combined_sha256(files),
        files=files,
        documents=sum(part.documents or 0 for part in parts),
        read_texts=lambda: chain.from_iterable(part.texts() for part in parts),
        suite=SUITE_JOIN.join(str(part.suite) for part in parts),
        suite_sha256=None,  # one per part, in `files`, where the overlap check looks
        answers_file=None,  # one per part, in `files`
        records=records,
        prompt_format=parts[0].prompt_format,
    )
