"""Data sources: a split held in memory and the means to turn indices into views.

A source answers two questions for a batch of dataset indices [B]:
- `views(index, num_views, generator)`: augmented views, each [B, 3, S, S]
  float32 normalised, on the compute device;
- `plain(index)`: the un-augmented normalised images (for kNN / probes).
and carries `targets` for evaluation: class labels [N] (classification) or
the generative parameters [N, 4] (Spirograph, regression).

Images live on the compute device as one uint8 tensor when they fit (all of
CIFAR-10 is 150 MB); otherwise in pinned host memory, gathered per batch and
copied asynchronously.
"""
import logging
from typing import List, Optional

import torch

from ..errors import UserError
from . import spirograph
from .augment import BatchAugment, BatchNormalize
from .datasets import ImageSet, load_images

log = logging.getLogger(__name__)

# Keep the data set on the GPU only if it takes at most this share of free memory.
_DEVICE_SHARE = 0.25


def _place(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return images.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() <= _DEVICE_SHARE * free:
        return images.to(device)
    log.info("data set (%.1f GB) kept in pinned host memory", images.numel() / 1e9)
    return images.pin_memory()


class ImageSource:
    task = "classification"

    def __init__(self, data: ImageSet, device: torch.device, augment: Optional[BatchAugment],
                 normalize: BatchNormalize):
        self.device = device
        self.images = _place(data.images, device)
        self.labels = data.labels.to(device)
        self.targets = self.labels
        self.classes = data.classes
        self.augment = augment
        self.normalize = normalize

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        if self.images.device == self.device:
            return self.images[index]
        # pinned host copy -> device, overlapping with compute
        batch = torch.empty((len(index),) + self.images.shape[1:], dtype=torch.uint8).pin_memory()
        torch.index_select(self.images, 0, index.cpu(), out=batch)
        return batch.to(self.device, non_blocking=True)

    def views(self, index: torch.Tensor, num_views: int, generator: torch.Generator) -> List[torch.Tensor]:
        x = self._gather(index)
        return [self.augment(x, generator) for _ in range(num_views)]

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        return self.normalize(self._gather(index))


class SpirographSource:
    """Spirograph: fixed generative parameters per sample, nuisance re-drawn per view."""
    task = "regression"
    classes: List[str] = []

    def __init__(self, num_samples: int, seed: int, device: torch.device, mean, std):
        g = torch.Generator().manual_seed(seed)
        self.device = device
        self.params = spirograph.sample_data_params(num_samples, g).to(device)          # [N, 4]
        # one fixed nuisance draw per sample for the un-augmented (evaluation) image
        self.fixed_nuisance = spirograph.sample_nuisance_params(num_samples, g).to(device)
        self.labels = torch.full((num_samples,), -1, dtype=torch.int64, device=device)
        self.targets = self.params
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.params.shape[0]

    has_labels = False

    def views(self, index: torch.Tensor, num_views: int, generator: torch.Generator) -> List[torch.Tensor]:
        p = self.params[index]
        out = []
        for _ in range(num_views):
            nuisance = spirograph.sample_nuisance_params(len(index), generator, self.device)
            out.append((spirograph.render(p, nuisance) - self.mean) / self.std)
        return out

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        img = spirograph.render(self.params[index], self.fixed_nuisance[index])
        return (img - self.mean) / self.std


def build_source(cfg, split: str, device: torch.device):
    """The 'train' or 'test' split of cfg.dataset as a source on `device`."""
    d, a = cfg.dataset, cfg.augment
    if d.name == "spirograph":
        n = d.num_train if split == "train" else d.num_test
        # train and test draw from separate seeds: disjoint samples
        return SpirographSource(n, seed=(0 if split == "train" else 1), device=device,
                                mean=d.mean, std=d.std)
    data = load_images(d, split)
    if split == "train" and d.subset is not None:
        if d.subset > len(data):
            raise UserError(f"dataset.subset={d.subset} is larger than the {d.name} training "
                            f"split ({len(data)} images). Fix: dataset.subset<={len(data)} or null")
        data = data.first(d.subset)
    if data.images.shape[-1] != d.size and d.name != "imagefolder":
        log.info("%s images are %dpx, resized to dataset.size=%d on the fly",
                 d.name, data.images.shape[-1], d.size)
    normalize = BatchNormalize(d.size, d.mean, d.std)
    augment = BatchAugment(
        d.size, d.mean, d.std, crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio),
        interpolation=a.interpolation, flip_p=a.flip_p, jitter_p=a.jitter_p,
        brightness=a.brightness, contrast=a.contrast, saturation=a.saturation, hue=a.hue,
        grayscale_p=a.grayscale_p, blur_p=a.blur_p, blur_kernel_size=a.blur_kernel_size,
        blur_sigma=tuple(a.blur_sigma), solarize_p=a.solarize_p,
        solarize_threshold=a.solarize_threshold) if split == "train" else None
    return ImageSource(data, device, augment, normalize)
