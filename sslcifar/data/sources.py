"""Data sources: a split held in memory and the means to turn indices into views.

A source answers two questions for a batch of dataset indices [B]:
- `views(index, num_views, generator)`: augmented views, each [B, 3, S, S]
  float32 normalised, on the compute device;
- `plain(index)`: the un-augmented normalised images (for kNN / probes).
and carries `targets` for evaluation: class labels [N] (classification) or
the generative parameters [N, 4] (Spirograph, regression).

Images live on the compute device as one uint8 tensor when they fit (all of
CIFAR-10 is 150 MB); otherwise in host memory (pinned on CUDA), gathered per
batch with indices that are already on the host and copied asynchronously, so
no step waits for the GPU (`dataset.placement`).
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


def _on_host(images: torch.Tensor, device: torch.device, placement: str) -> bool:
    """Whether the training images stay in host memory (dataset.placement)."""
    if placement != "auto":
        return placement == "host"
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() > _DEVICE_SHARE * free


class ImageSource:
    task = "classification"

    def __init__(self, data: ImageSet, device: torch.device, augment: Optional[BatchAugment],
                 normalize: BatchNormalize, placement: str = "auto"):
        self.device = device
        self.on_host = _on_host(data.images, device, placement)
        if self.on_host:
            # page-locked memory lets the per-batch copy run asynchronously
            self.images = data.images.pin_memory() if device.type == "cuda" else data.images
            log.info("data set (%.2f GB) kept in host memory, copied per batch",
                     data.images.numel() / 1e9)
        else:
            self.images = data.images.to(device)
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

    def _gather(self, index: torch.Tensor, host_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 images [B, 3, H, W] on the compute device. `host_index`: the same
        indices on the CPU (the training loop has them), sparing a device-to-host copy."""
        if not self.on_host:
            return self.images[index]
        if host_index is None:
            host_index = index.cpu()        # evaluation only: waits for the GPU once per batch
        batch = torch.empty((len(host_index),) + self.images.shape[1:], dtype=torch.uint8,
                            pin_memory=self.images.is_pinned())
        torch.index_select(self.images, 0, host_index, out=batch)
        # from pinned memory: returns at once, the copy overlaps with the GPU's work
        return batch.to(self.device, non_blocking=True)

    def views(self, index: torch.Tensor, num_views: int, generator: torch.Generator,
              host_index: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        x = self._gather(index, host_index)
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

    def first(self, n: int) -> "SpirographSource":
        """The first n samples (dataset.subset): the same images as in the full set."""
        import copy
        src = copy.copy(self)
        src.params, src.fixed_nuisance = self.params[:n], self.fixed_nuisance[:n]
        src.labels = self.labels[:n]
        src.targets = src.params
        return src

    has_labels = False

    def views(self, index: torch.Tensor, num_views: int, generator: torch.Generator,
              host_index: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        p = self.params[index]
        out = []
        for _ in range(num_views):
            nuisance = spirograph.sample_nuisance_params(len(index), generator, self.device)
            out.append((spirograph.render(p, nuisance) - self.mean) / self.std)
        return out

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        img = spirograph.render(self.params[index], self.fixed_nuisance[index])
        return (img - self.mean) / self.std


def _check_subset(d, available: int) -> None:
    if d.subset > available:
        raise UserError(f"dataset.subset={d.subset} is larger than the {d.name} training "
                        f"split ({available} images). Fix: dataset.subset<={available} or null")


def build_source(cfg, split: str, device: torch.device):
    """The 'train' or 'test' split of cfg.dataset as a source on `device`."""
    d, a = cfg.dataset, cfg.augment
    if d.name == "spirograph":
        n = d.num_train if split == "train" else d.num_test
        # train and test draw from separate seeds: disjoint samples
        src = SpirographSource(n, seed=(0 if split == "train" else 1), device=device,
                               mean=d.mean, std=d.std)
        if split == "train" and d.subset is not None:
            _check_subset(d, n)
            src = src.first(d.subset)
        return src
    data = load_images(d, split)
    if split == "train" and d.subset is not None:
        _check_subset(d, len(data))
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
    return ImageSource(data, device, augment, normalize, d.placement)
