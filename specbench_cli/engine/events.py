"""CUDA timing events made once and recorded again once read.

The step clock marks four events a step and a timed draft runner two per graph forward; making each
anew is host work inside the very interval it times. A pool hands out its events in order and starts
over at `reset()`, which its user calls only after every event it recorded has been read.
"""

from __future__ import annotations

import torch


class EventPool:
    def __init__(self) -> None:
        self._events: list[torch.cuda.Event] = []
        self._used = 0

    def record(self) -> torch.cuda.Event:
        """The next event of the pool (made on first need), recorded on the current stream."""
        if self._used == len(self._events):
            self._events.append(torch.cuda.Event(enable_timing=True))
        event = self._events[self._used]
        self._used += 1
        event.record()
        return event

    def recorded(self) -> list[torch.cuda.Event]:
        """The events recorded since the last reset, in order."""
        return self._events[: self._used]

    def reset(self) -> None:
        """Everything recorded was read: the events may be recorded again."""
        self._used = 0
