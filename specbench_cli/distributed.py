"""`torchrun --nproc-per-node N -m specbench_cli eval ...`: data parallelism over questions.

Every process (rank) holds the whole model on its own device (`cuda:LOCAL_RANK`, or the CPU) and
answers its share of the questions, with every method *and its own `ar`*, so each speedup is still
measured in one process on one device. Questions are dealt in run order (suites in the order given,
questions in each suite's order): global index i goes to rank i % world.

Files: rank R appends to its own `answers/.rankR/<suite>/<method>.jsonl` (and `scores/.rankR/...`),
so no two ranks write one file; the hidden folders are invisible to the report. When every rank is
done, rank 0 merges them into the normal answer files in question order (`merge_rank_files`) and
writes the report. Only rank 0 holds the run-folder lock and writes config.json and env.json. A killed
rank loses only its unfinished questions: `--resume`, with any number of ranks (one included), reads
what is done from the merged files and every rank folder (`done_answers`), so nothing is answered twice.

Without torchrun's environment (WORLD_SIZE unset or 1) nothing here changes a run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from .results import RunPaths, answer_key, read_answers, write_text_atomic
from .types import SpecbenchError

T = TypeVar("T")

# Ranks wait for each other only at the start and the end; the end waits for the slowest rank's
# whole share of the run, which may take hours, so the default 30-minute (gloo) timeout is too short.
WAIT_LIMIT = timedelta(hours=48)
RANK_FOLDER = ".rank"  # answers/.rank<R>/: hidden, so iter_answer_files and the report skip it


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a torchrun launch."""

    rank: int
    world: int
    local_rank: int

    @property
    def lead(self) -> bool:
        return self.rank == 0


def launched_ranks() -> Ranks | None:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or None for a one-process run."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or world == "1":
        return None
    try:
        ranks = Ranks(int(os.environ["RANK"]), int(world), int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise SpecbenchError(
            f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or not numbers; launch with torchrun"
        ) from None
    if not 0 <= ranks.rank < ranks.world:
        raise SpecbenchError(f"RANK={ranks.rank} is outside WORLD_SIZE={ranks.world}")
    return ranks


def rank_device(ranks: Ranks | None, device: str) -> str:
    """One GPU per rank: a resolved `cuda` becomes `cuda:LOCAL_RANK`; an explicit `cuda:N` is refused
    (every rank would share that one GPU)."""
    if ranks is None or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise SpecbenchError(
            f"--device {device} under torchrun: use --device cuda (rank r takes cuda:LOCAL_RANK)"
        )
    return f"cuda:{ranks.local_rank}"


def start(ranks: Ranks, device: str) -> None:
    """Join the process group: nccl on CUDA, gloo on the CPU (no tensors travel: only barriers and
    the lead's go-ahead, so the backend matters little)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl", timeout=WAIT_LIMIT, device_id=torch.device(device))
    else:
        dist.init_process_group("gloo", timeout=WAIT_LIMIT)


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wait_all() -> None:
    import torch.distributed as dist

    dist.barrier()


def lead_outcome(ranks: Ranks, error: SpecbenchError | None) -> None:
    """Rank 0 tells the others whether its step (lock, resume check) passed; all raise its error."""
    import torch.distributed as dist

    box = [str(error) if error is not None else None]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise SpecbenchError(box[0])


def my_share(items: list[T], ranks: Ranks | None) -> list[T]:
    """The items dealt to this rank: index i goes to rank i % world (all of them without torchrun)."""
    if ranks is None:
        return list(items)
    return [item for i, item in enumerate(items) if i % ranks.world == ranks.rank]


def rank_paths(paths: RunPaths, ranks: Ranks | None) -> RunPaths:
    """The paths this rank appends answers and scores to: its own hidden folders under torchrun."""
    if ranks is None:
        return paths
    mine = RunPaths(paths.root)
    mine.answers_dir = paths.answers_dir / f"{RANK_FOLDER}{ranks.rank}"
    mine.scores_dir = paths.scores_dir / f"{RANK_FOLDER}{ranks.rank}"
    return mine


def _rank_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{RANK_FOLDER}*") if p.is_dir() and p.name[len(RANK_FOLDER) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(RANK_FOLDER) :]))


def _copies(folder: Path, main_file: Path) -> list[Path]:
    """The merged file and every rank's file for one (suite, method), those that exist."""
    relative = main_file.relative_to(folder)
    return [p for p in [main_file, *(d / relative for d in _rank_dirs(folder))] if p.is_file()]


def done_answers(paths: RunPaths, suite: str, method: str) -> dict:
    """(question_id, repeat) -> answer record, from the merged file and every rank folder (--resume)."""
    done: dict = {}
    for path in _copies(paths.answers_dir, paths.answers_file(suite, method)):
        done |= {answer_key(r): r for r in read_answers(path)}
    return done


def merge_rank_files(paths: RunPaths, order: dict[str, list]) -> int:
    """Fold every rank folder into the normal answer and score files, lines in run order (repeat, then
    question: `order` maps a suite label to its question ids), then remove the rank folders. Returns
    the number of files merged.

    Crash-safe: each merged file is replaced atomically before any rank file is removed, and merging
    again is harmless (records are keyed by question_id), so a merge killed half-way is redone.
    """
    import json

    merged = 0
    for folder in (paths.answers_dir, paths.scores_dir):
        rank_dirs = _rank_dirs(folder)
        targets = sorted({p.relative_to(d) for d in rank_dirs for p in d.glob("*/*.jsonl") if p.is_file()})
        for relative in targets:
            main_file = folder / relative
            records: dict = {}
            for path in _copies(folder, main_file):
                records |= {answer_key(r): r for r in read_answers(path)}
            position = {qid: i for i, qid in enumerate(order.get(relative.parent.name, []))}
            # Unknown question ids go last, in the order found (sorted is stable).
            keys = sorted(records, key=lambda k: (k[1], position.get(k[0], len(position))))
            main_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(main_file, "".join(json.dumps(records[k]) + "\n" for k in keys))
            merged += 1
        for d in rank_dirs:
            shutil.rmtree(d)
    return merged


def lead_step(ranks: Ranks | None, step) -> None:
    """Run `step` (claim the run folder, check --resume) on rank 0 only, after every rank has passed
    its own checks (so none finds a folder that rank 0 just created); all ranks raise its error."""
    if ranks is None:
        step()
        return
    wait_all()
    error = None
    if ranks.lead:
        try:
            step()
        except SpecbenchError as e:
            error = e
    lead_outcome(ranks, error)
