"""Multi-process plumbing for torchrun: who this process is, averaging over ranks, gathering every rank's
random-stream states, and the bitwise check that the ranks still agree.

Owns the collectives trainer.py and train.py need, and the order in which processes (of one node or of several)
read what one of them builds first; with one process every function returns at once without touching
torch.distributed. Does not own what is averaged or when (trainer.py, train.py).
"""

import os

import torch
import torch.distributed as dist

import errors


def dist_env():
    """(rank, world size, local rank) as torchrun sets them in RANK / WORLD_SIZE / LOCAL_RANK: the rank counts
    the processes of every node (rank 0 alone writes the run folder), the local rank those of this node (it
    picks the GPU)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def all_reduce_mean_(tensors, world_size: int) -> None:
    """Average tensors over ranks in place (one flat all-reduce)."""
    if world_size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def any_rank(flag: bool, device, world_size: int) -> bool:
    """True when flag is true on any rank (collective)."""
    if world_size == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def in_turns(work, rank: int, local_rank: int, world_size: int, device):
    """work() on every process, in three turns (collective): global rank 0 first (it fills what is shared,
    e.g. a cache on a shared file system), then the first process of every other node (what is local to a
    node: a node-local cache), then the rest, which find both ready. Returns work()'s value. When work()
    raises a ProjectError on one process, the later turns are skipped and every process stops with a line."""
    if world_size == 1:
        return work()
    mine = 0 if rank == 0 else 1 if local_rank == 0 else 2
    result = failed = None
    for turn in range(3):
        if turn == mine:
            try:
                result = work()
            except errors.ProjectError as e:
                failed = e
        if any_rank(failed is not None, device, world_size):
            raise failed or errors.ProjectError(f"process {rank}: stopped, another process failed first (its "
                                                f"message names the cause)")
    return result


def from_rank0(value, world_size: int):
    """Rank 0's value of a small picklable object, on every rank (collective)."""
    if world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_states(mine: dict, world_size: int) -> dict:
    """Every rank's values of `mine` (name -> uint8 CPU tensor, e.g. random generator states), as lists
    indexed by rank (collective)."""
    if world_size == 1:
        return {k: [v] for k, v in mine.items()}
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {k: v.numpy().tobytes() for k, v in mine.items()})
    return {k: [torch.frombuffer(bytearray(g[k]), dtype=torch.uint8) for g in gathered] for k in mine}


def check_ranks_in_sync(modules: dict, world_size: int) -> bool:
    """True when every rank holds the same parameters and buffers as rank 0 (bitwise)."""
    if world_size == 1:
        return True
    device = next(iter(modules.values())).mapping.w_avg.device if "G" in modules else torch.device("cpu")
    same = torch.ones([], dtype=torch.float32, device=device)
    for module in modules.values():
        for t in list(module.parameters()) + list(module.buffers()):
            ref = t.detach().clone()
            dist.broadcast(ref, src=0)
            same *= float(torch.equal(ref, t.detach()))
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())
