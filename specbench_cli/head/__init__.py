"""EAGLE draft heads: the head (`model.py`), its training data (`data.py`), training (`train.py`) and
the `specbench train-head` command (`command.py`). The `eagle2` drafter drafts with a trained head."""
