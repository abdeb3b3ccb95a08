"""Data sources: a split held in memory and the means to turn indices into views.

A source answers two questions for a batch of dataset indices [B]:
- `views(index, generator)`: the augmented views of its view groups, each [B, 3, S_v, S_v]
  float32 normalised, on the compute device, with the parameters that made them and a
  function that re-makes a view from parameters (see `sslcifar.data.batch.Batch`);
- `plain(index)`: the un-augmented normalised images (for kNN / probes).
and carries `targets` for evaluation: class labels [N] (classification) or
the generative parameters [N, 4] (Spirograph, regression).

Images live on the compute device as one uint8 tensor when they fit (all of
CIFAR-10 is 150 MB); otherwise in host memory (pinned on CUDA), gathered per
batch with indices that are already on the host and copied asynchronously, so
no step waits for the GPU (`dataset.placement`).
"""
import logging
from typing import Optional

import torch

from ..errors import UserError
from .augment import BatchNormalize, ViewMaker
from .batch import Nuisance
from .datasets import ImageSet, load_images
from .spirograph import SpirographSource
from .views import view_specs

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

    def __init__(self, data: ImageSet, device: torch.device, views: Optional[ViewMaker],
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
        self.view_maker = views           # None: an evaluation split (plain images only)
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

    def views(self, index: torch.Tensor, generator: torch.Generator,
              host_index: Optional[torch.Tensor] = None):
        """(views, params, replay, nuisance) of the images `index` (see Batch)."""
        x = self._gather(index, host_index)
        views, params = self.view_maker.make(x, generator)
        maker = self.view_maker
        nuisance = Nuisance("jitter", lambda v, m, n, g: maker.draw_jitter(v, m, n, g, x.device))
        return views, params, lambda v, p: maker.replay(x, v, p), nuisance

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        return self.normalize(self._gather(index))


def _check_subset(d, available: int) -> None:
    if d.subset > available:
        raise UserError(f"dataset.subset={d.subset} is larger than the {d.name} training "
                        f"split ({available} images). Fix: dataset.subset<={available} or null")


def _streams(d, split: str) -> bool:
    """Whether a folder data set is streamed: pipeline=stream, or auto with a decoded copy
    at dataset.size larger than the memory budget (said in the log)."""
    if d.pipeline in ("stream", "dali"):
        return True
    if d.pipeline != "auto":
        return False
    from .folders import list_images
    from .stream import decoded_bytes, memory_budget
    which = d.train_split if split == "train" else d.test_split
    n = len(list_images(d.root, which, d.classes_file)[0])
    need, budget = decoded_bytes(n, d.size), memory_budget(d)
    if need > budget:
        log.info("dataset.pipeline=auto: streaming %s (%s) from disk: decoded at %d px it would "
                 "take %.1f GB, over the memory budget of %.1f GB (dataset.memory_budget_mb)",
                 d.root, which, d.size, need / 1e9, budget / 1e9)
        return True
    return False


def build_source(cfg, split: str, device: torch.device, augment: bool = False):
    """The 'train' or 'test' split of cfg.dataset as a source on `device`; with `augment`
    (the training loop's split) it makes the views of cfg.augment's view groups."""
    d = cfg.dataset
    if d.name == "spirograph":
        n = d.num_train if split == "train" else d.num_test
        # train and test draw from separate seeds: disjoint samples
        num_views = sum(g.count for g in cfg.augment.groups) if augment else 0
        src = SpirographSource(n, seed=(0 if split == "train" else 1), device=device,
                               mean=d.mean, std=d.std, num_views=num_views)
        if split == "train" and d.subset is not None:
            _check_subset(d, n)
            src = src.first(d.subset)
        return src
    from .folders import FOLDER_DATASETS
    if d.name in FOLDER_DATASETS and _streams(d, split):
        from .stream import StreamSource
        specs = view_specs(cfg.augment, d) if augment else None
        if d.pipeline == "dali":
            from .dali import DaliSource
            return DaliSource(d, split, device, specs)
        return StreamSource(d, split, device, specs)
    data = load_images(d, split)
    if split == "train" and d.subset is not None:
        _check_subset(d, len(data))
        data = data.stratified(d.subset) if d.subset_mode == "stratified" else data.first(d.subset)
    if data.images.shape[-1] != d.size and d.name != "imagefolder":
        log.info("%s images are %dpx, resized to dataset.size=%d on the fly",
                 d.name, data.images.shape[-1], d.size)
    normalize = BatchNormalize(d.size, d.mean, d.std)
    views = (ViewMaker(view_specs(cfg.augment, d), d.mean, d.std, cfg.augment.get("compile", False))
             if augment else None)
    return ImageSource(data, device, views, normalize, d.placement)
