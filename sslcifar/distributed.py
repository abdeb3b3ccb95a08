"""Devices and torch.distributed in a few helpers that are no-ops on one process.

Launchers: `torchrun` (sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR) or
SLURM via submitit (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; submitit's
`JobEnvironment` gives the master address). NCCL on CUDA, gloo on CPU.
"""
import os
from typing import List, Optional

import torch
import torch.distributed as dist

from .errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def pick_device(name: str) -> torch.device:
    """auto (CUDA when visible) | cpu | cuda; with several processes, this rank's GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"device={name} is not allowed: use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda is not allowed: no CUDA device is visible. "
                        "Fix: device=auto or device=cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None means full fp32. 'auto' is bf16 on CUDA (no loss scaling needed) and fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _env_world_size() -> int:
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ and "SUBMITIT_EXECUTOR" in os.environ:
        return int(os.environ["SLURM_NTASKS"])
    return 1


def init_from_env(device_type: str) -> None:
    """Join the process group the launcher describes; nothing on one process."""
    if is_distributed() or _env_world_size() <= 1:
        return
    if "RANK" not in os.environ:               # launched by submitit on SLURM
        import submitit
        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank),
                          WORLD_SIZE=str(env.num_tasks),
                          MASTER_ADDR=env.hostnames[0],
                          # SLURM_JOB_ID: unique per job, also per element of a job array
                          # (env.job_id reads "<array>_<index>" there)
                          MASTER_PORT=os.environ.get("MASTER_PORT",
                                                     str(20000 + int(env.raw_job_id) % 20000)))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and
    returns this rank's slice: every rank computes the loss of the *global*
    batch, and DDP's gradient average then equals the one-process gradient."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[rank() * n:(rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank -> [world*b, ...] in rank order, differentiable."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank -> [world*b, ...] in rank order, no gradient."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is True on at least one. A collective:
    every rank must call it at the same step."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(values: List[float], device) -> List[float]:
    """Average a few Python scalars over ranks (for logging)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world_size()).tolist()
