"""Retrieval datastores built by `specbench build-index --method KIND` and read by the drafters.

One kind = one `Datastore` subclass (base.py) in a module named like the method that reads it
(rest.py, dresd.py, sam.py), registered in `registry.DATASTORES`. build.py is the one build driver;
manifest.py the manifest every store carries; corpus.py and generate.py the corpora.
"""

from __future__ import annotations

from .build import build_from_token_docs, build_index

__all__ = ["build_index", "build_from_token_docs"]
