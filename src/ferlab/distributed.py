"""Data-parallel training with torch.distributed: NCCL on GPUs, gloo on CPU.

``train(cfg, nproc=N)`` (``ferlab train --nproc N``) starts N local processes; ``torchrun
--nproc-per-node N -m ferlab train ...`` works as well, because ``train`` joins the process
group its environment describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

Every rank draws the same shuffle and the same augmentation for the whole global batch and
trains on its slice ``rank::world``, so a run matches one process with the same global batch
up to batch-norm statistics (per rank on CPU, where SyncBatchNorm does not run; synced on GPU),
dropout masks (each rank draws its own, as one process draws one per row) and the order of
floating-point sums. Only rank 0 writes files; checkpoints keep every rank's RNG state.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of the cores this process may use (at least one)."""
    # taskset and docker --cpuset-cpus restrict the cores, but not os.cpu_count()
    if hasattr(os, "sched_getaffinity"):  # not on macOS or Windows
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, cores // max(workers, 1))


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> Dist:
    """Join the process group described by the environment; a single process if none."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        # before any collective: NCCL stages objects on the current device, which is cuda:0
        # in every process until set, and two ranks on one GPU fail or hang
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), world, local_rank, int(env.get("LOCAL_WORLD_SIZE", str(world))))


def rank_seed(seed: int, d: Dist) -> int:
    """A seed for rank ``d.rank``'s own random stream (dropout), distinct per rank and run."""
    return seed + 1_000_003 * (d.rank + 1)


def close(d: Dist, finished: bool) -> None:
    """Leave the process group. ``finished``: every rank got here normally, so they leave
    together (a barrier); after a failure the others may be gone and would never meet it."""
    if not (d.active and dist.is_initialized()):
        return
    # CI once saw rank 1 die of SIGABRT ("terminate called without an active exception") at
    # the end of a run, tearing gloo down while rank 0 still wrote its files. The usual
    # cures: leave together, and free what may still hold the group (DDP's reducer, in
    # reference cycles) now rather than during interpreter shutdown.
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module to train with: DDP when distributed (SyncBatchNorm on GPU), else the model."""
    if not d.active:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def sync_buffers(model: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's batch-norm running statistics (each rank saw its own slices)."""
    if d.active:
        for b in model.buffers():
            dist.broadcast(b, 0)


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.active:
        dist.all_reduce(t)
    return t


def gather_rows(part: torch.Tensor, n: int, d: Dist) -> torch.Tensor:
    """Reassemble ``n`` rows that ranks computed as slices ``rank::world``, in order."""
    if not d.active:
        return part
    # NCCL gathers only GPU tensors (teacher targets are computed on the CPU); gloo, CPU ones
    where = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    size = math.ceil(n / d.world)
    padded = torch.zeros((size, *part.shape[1:]), dtype=part.dtype, device=where)
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    # row j of rank r is item j * world + r; padding lands past n and is cut
    rows = torch.stack(parts, 1).reshape(size * d.world, *part.shape[1:])[:n]
    return rows.to(part.device)


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


def all_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's value of a picklable object, on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def launch(fn: Callable[..., Any], nproc: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` local processes forming one process group."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    level = logging.getLogger().level
    try:
        mp.start_processes(
            _worker, args=(fn, nproc, port, level, args), nprocs=nproc, start_method="spawn"
        )
    except mp.ProcessRaisedException as e:  # the child's traceback, as its one last line
        last = [line for line in str(e).splitlines() if line.strip()][-1]
        raise RuntimeError(f"rank {e.error_index}: {last}") from None
    except mp.ProcessExitedException as e:  # killed by a signal or os._exit: no traceback
        how = f"killed by {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
        raise RuntimeError(f"rank {e.error_index}: process died ({how})") from None


def _worker(rank: int, fn: Callable[..., Any], nproc: int, port: int, level: int, args) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # spawned children start with default logging: rank 0 speaks, the others only warn
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if rank:
        os.environ["FERLAB_PROGRESS"] = "0"
    fn(*args)
