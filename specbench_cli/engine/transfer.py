"""Host <-> device copies that do not wait for the GPU to drain.

Why: a plain `torch.tensor(values, device="cuda")` or `t.tolist()` synchronises the whole stream
(PyTorch copies pageable memory and then waits for the stream). A drafter that queues draft forwards
and then builds an index tensor, or reads one small result, stalls the host until every queued
forward is done, and the GPU then idles while the host does its Python. Through pinned memory the
copy is queued like a kernel, and a read waits only for the event recorded after it: a tree drafter
can read its tree back while a later forward (RASD's scoring) still runs.

On the CPU both are plain copies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def upload(values: list[int], device: torch.device) -> torch.Tensor:
    """A 1-D long tensor of `values` on `device`, its copy queued on the current stream."""
    host = torch.tensor(values, dtype=torch.long, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def read_later(values: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Queue the copy of `values` to the host now; the returned call waits for that copy alone (not
    for work queued after it) and gives the host tensor."""
    if values.device.type != "cuda":
        host = values.clone()  # the caller may overwrite `values` (a runner's output buffer) meanwhile
        return lambda: host
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    # On the stream of the device the copy ran from (cuda:N need not be the current device).
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(values.device))

    def read() -> torch.Tensor:
        done.synchronize()
        return host

    return read
