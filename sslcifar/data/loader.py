"""Batches of a training epoch: which images, and their augmented views.

The order is a pure function of (seed, epoch) and the augmentation randomness
of (seed, epoch, step, rank): resuming at any step replays exactly what an
uninterrupted run would have seen, with no RNG state to save.

With several ranks, each global batch of B images is split into contiguous
slices of B/world, so 2 ranks x b see the same images as 1 process x 2b.

Two pipelines:
- `device` (default): images already on the device; views made for the whole
  batch at once by the source's `ViewMaker`, with their parameters. No worker processes.
- `torchvision`: the per-image PIL reference pipeline in DataLoader workers,
  kept for comparisons (`bench/throughput.py`) and for checking that our
  batched augmentation trains as well.
"""
from typing import Iterator, List

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import ViewSpec
from .batch import Batch
from .order import epoch_order, mix_seed, to_device, worker_batches
from .views import view_specs

class DeviceBatches:
    """Views made on the device by the source itself (BatchAugment / Spirograph)."""

    def __init__(self, source, batch_size: int, seed: int, rank: int, world: int):
        self.source, self.batch_size = source, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.local = batch_size // world
        self.steps_per_epoch = len(source) // batch_size

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        host_order = epoch_order(len(self.source), self.batch_size, self.seed, epoch)
        order = to_device(host_order, self.source.device)     # one copy per epoch
        sl = slice(self.rank * self.local, (self.rank + 1) * self.local)
        for step in range(start_step, self.steps_per_epoch):
            index = order[step, sl]
            g = torch.Generator(device=self.source.device)
            g.manual_seed(mix_seed(self.seed, epoch, step, self.rank))
            # host indices too: a source holding its images in host memory gathers
            # with them, never reading indices back from the GPU
            views, params, replay, nuisance = self.source.views(index, g,
                                                                host_index=host_order[step, sl])
            yield Batch(views, index, self.source.labels[index], params, replay, nuisance)


def torchvision_transform(spec: ViewSpec, mean, std) -> "torchvision.transforms.Compose":
    """The per-image reference augmentation of one view group."""
    from torchvision import transforms as T
    steps = [T.RandomResizedCrop(spec.size, scale=spec.crop_scale, ratio=spec.crop_ratio,
                                 interpolation=T.InterpolationMode(spec.interpolation)),
             T.RandomHorizontalFlip(spec.flip_p),
             T.RandomApply([T.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)],
                           p=spec.jitter_p),
             T.RandomGrayscale(spec.grayscale_p)]
    if spec.blur_p > 0:
        steps.append(T.RandomApply([T.GaussianBlur(spec.blur_kernel_size, spec.blur_sigma)],
                                   p=spec.blur_p))
    if spec.solarize_p > 0:
        steps.append(T.RandomSolarize(int(spec.solarize_threshold * 255), p=spec.solarize_p))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class _PILViews(Dataset):
    """Item (index, seed) -> (views: a list of [3, S_v, S_v], index, label); the seed makes
    each image's augmentation independent of worker count and resumable."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transforms: List):
        self.images, self.labels = images.cpu(), labels.cpu()
        self.transforms = transforms          # one per view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        from PIL import Image
        i, seed = item
        img = Image.fromarray(self.images[i].permute(1, 2, 0).numpy())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = [transform(img) for transform in self.transforms]
        return views, i, self.labels[i]


class TorchvisionBatches:
    """Per-image torchvision augmentation in DataLoader workers, same order as DeviceBatches."""

    def __init__(self, source, specs: List[ViewSpec], mean, std, batch_size: int, seed: int,
                 rank: int, world: int, num_workers: int, device: torch.device):
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world = rank, world
        self.steps_per_epoch = len(source) // batch_size
        self.device, self.num_workers = device, num_workers
        transforms = [torchvision_transform(s, mean, std) for s in specs for _ in range(s.count)]
        self.dataset = _PILViews(source.images, source.labels, transforms)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        batches = worker_batches(len(self.source), self.batch_size, self.seed, epoch,
                                 self.rank, self.world, start_step)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        for views, index, labels in loader:
            # torchvision's transforms do not hand back their parameters
            yield Batch([v.to(self.device, non_blocking=True) for v in views],
                        index.to(self.device), labels.to(self.device))


def build_batches(cfg, source, rank: int, world: int, device: torch.device):
    d = cfg.dataset
    if hasattr(source, "paths"):                 # a StreamSource: files decoded in workers
        from .stream import StreamBatches
        views_from_bytes = None
        if d.pipeline == "dali":                 # the workers read, DALI decodes and crops
            from .dali import DaliViews
            views_from_bytes = DaliViews(cfg.batch_size // world, device, d.num_workers)
        return StreamBatches(source, cfg.batch_size, cfg.seed, rank, world, d.num_workers,
                             device, d.decode, cfg.augment.get("compile", False), views_from_bytes)
    if d.pipeline == "torchvision" and d.name != "spirograph":
        return TorchvisionBatches(source, view_specs(cfg.augment, d), d.mean, d.std,
                                  cfg.batch_size, cfg.seed, rank, world, d.num_workers, device)
    return DeviceBatches(source, cfg.batch_size, cfg.seed, rank, world)
