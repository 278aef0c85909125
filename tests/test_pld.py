"""Prompt lookup against a brute-force matcher written from its definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from specbench_cli.drafters.pld import find_candidate


def brute_force(tokens: list[int], max_ngram: int, num_pred: int) -> list[int]:
    n_tok = len(tokens)
    for n in range(max_ngram, 0, -1):
        if n > n_tok:
            continue
        suffix = tokens[n_tok - n :]
        for start in range(n_tok - n + 1):
            after = start + n
            if tokens[start:after] == suffix and after + num_pred <= n_tok and after < n_tok - n:
                return tokens[after : after + num_pred]
    return []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=60),
    st.integers(1, 4),
    st.integers(1, 12),
)
def test_pld_matches_brute_force(tokens, max_ngram, num_pred):
    got = find_candidate(np.array(tokens), max_ngram, num_pred).tolist()
    assert got == brute_force(tokens, max_ngram, num_pred)


def test_pld_prefers_longest_ngram_and_first_occurrence():
    # "1 2 3" occurs at 0 (followed by 7s) and the 1-gram "3" occurs earlier inside; 3-gram wins.
    toks = [1, 2, 3, 7, 7, 3, 9, 9, 1, 2, 3]
    assert find_candidate(np.array(toks), 3, 2).tolist() == [7, 7]
