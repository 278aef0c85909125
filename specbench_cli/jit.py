"""`njit`: numba's compiler where numba is installed (it is a dependency), else a no-op decorator; and
`id_list_within`, the cheap check of the token lists the decode loop hands those kernels every step.

The kernels that use it (suffix arrays, suffix automata, Token Recycling's matrix) are plain loops
over numpy arrays, so without numba the same code still runs, only in Python and slowly.
"""

from __future__ import annotations

from typing import Any

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)


def id_list_within(tokens: Any, lo: int, hi: int) -> bool:
    """`tokens` is a list whose ids all lie in [lo, hi]. The decode loop hands the datastores a list of
    a few ids every step: the builtins check it in ~1 us, where converting it first and checking with
    numpy's reductions and masks cost ~8 us for three tokens (2-core CPU, 2026-12-03). Anything else
    (an array, a list with an id out of range) is for the caller's general numpy path."""
    return isinstance(tokens, list) and (not tokens or (min(tokens) >= lo and max(tokens) <= hi))


__all__ = ["id_list_within", "njit"]
