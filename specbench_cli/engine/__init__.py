"""The speculative-decoding engine: slot KV cache, model runner, verifier, decode loop."""
