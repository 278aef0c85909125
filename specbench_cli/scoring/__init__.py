"""Task scores: the sandbox that runs model-written code (sandbox.py, launcher.py) and the scores it stores (scores.py)."""
