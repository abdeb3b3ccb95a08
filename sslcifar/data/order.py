"""Which images a step sees, and its seeds: a pure function of (seed, epoch, step, rank).

The order of an epoch is drawn on the CPU from (seed, epoch); each step's augmentation
from (seed, epoch, step, rank); the streaming pipeline's crops from (seed, epoch, image,
view). Resuming at any step replays exactly what an uninterrupted run would have seen,
with no RNG state to save.
"""
import torch

_MIX = 1_000_003   # odd multiplier to combine seed parts into one 63-bit seed


def mix_seed(*parts: int) -> int:
    s = 0
    for p in parts:
        s = (s * _MIX + int(p) + 1) % (1 << 63)
    return s


def epoch_order(num_samples: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """[steps_per_epoch, batch_size] dataset indices of one epoch (drop_last), on the CPU.

    Drawn on the CPU on every machine: a run sees the same images in the same
    order on a CPU or a GPU, with its data on the GPU or in host memory, and in
    either pipeline."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    steps = num_samples // batch_size
    perm = torch.randperm(num_samples, generator=g)
    return perm[: steps * batch_size].view(steps, batch_size)


def worker_batches(num_samples: int, batch_size: int, seed: int, epoch: int, rank: int,
                   world: int, start_step: int = 0) -> list:
    """This rank's items of each step from `start_step` on, for a DataLoader batch_sampler:
    [(dataset index, seed of that image this epoch)] per step. Rank r takes the r-th
    contiguous slice of each global batch; an image's seed depends on (seed, epoch, index)
    only, never on a worker."""
    order = epoch_order(num_samples, batch_size, seed, epoch)
    local = batch_size // world
    sl = slice(rank * local, (rank + 1) * local)
    return [[(int(i), mix_seed(seed, epoch, int(i))) for i in order[s, sl]]
            for s in range(start_step, len(order))]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to `device` without making the host wait (pinned source on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
