"""specbench: a benchmark harness for retrieval-based speculative decoding."""

__version__ = "0.1.0"
