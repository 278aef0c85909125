"""`njit`: numba's compiler where numba is installed (it is a dependency), else a no-op decorator.

The kernels that use it (suffix arrays, suffix automata, Token Recycling's matrix) are plain loops
over numpy arrays, so without numba the same code still runs, only in Python and slowly.
"""

from __future__ import annotations

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)


__all__ = ["njit"]
