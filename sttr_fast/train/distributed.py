"""torch.distributed set-up for runs launched with ``torchrun`` (one process per device)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: str = "auto") -> Context:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"train.device={device!r} but CUDA is not available on this machine")
    if use_cuda:
        chosen = torch.device("cuda", local_rank) if device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(rank, world_size, chosen)


def stop(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(context: Context, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (identity in a single process)."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64,
                          device=context.device if context.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(context: Context, obj) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not context.distributed:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def share_buffers(context: Context, module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which DDP only syncs at the
    start of each training forward, so that all processes evaluate the same model."""
    if context.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()
