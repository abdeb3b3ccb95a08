"""The view groups of the `augment` config, resolved into one `ViewSpec` per group.

    augment:
      crop_scale: [0.08, 1.0]      # the base augmentation: every group inherits it
      ...
      groups:                      # in order; `count` views each
        - count: 2                 # size null: dataset.size
      small_crops: 0               # multi-crop shortcut: a group of small crops appended
      small_size: null             # null: dataset.small_size (CIFAR 24, STL-10 58)
      small_crop_scale: [0.05, 0.14]

A field set in a group overrides the base for that group only, so asymmetric views
(BYOL: blur on one, solarize on the other) and multi-crop are configuration.
"""
from typing import List

from ..errors import UserError
from .augment import ViewSpec

FIELDS = ("crop_scale", "crop_ratio", "interpolation", "flip_p", "jitter_p", "brightness",
          "contrast", "saturation", "hue", "grayscale_p", "blur_p", "blur_kernel_size",
          "blur_sigma", "solarize_p", "solarize_threshold", "jitter_mode")
_PAIRS = ("crop_scale", "crop_ratio", "blur_sigma")


def _resolved(base: dict, group: dict, size: int, count: int) -> ViewSpec:
    fields = {k: (group[k] if group.get(k) is not None else base[k]) for k in FIELDS}
    for k in _PAIRS:
        fields[k] = tuple(float(v) for v in fields[k])
    return ViewSpec(size=int(size), count=int(count), **fields)


JITTER_MODES = ("torchvision", "invclr")


def view_specs(augment, dataset) -> List[ViewSpec]:
    """One ViewSpec per view group of cfg.augment, for images of cfg.dataset."""
    base = {k: augment[k] for k in FIELDS}
    specs = []
    for i, g in enumerate(augment.groups):
        if g.count < 1:
            raise UserError(f"augment.groups.{i}.count={g.count} is not allowed: needs >= 1")
        specs.append(_resolved(base, g, g.size or dataset.size, g.count))
        if specs[-1].jitter_mode not in JITTER_MODES or specs[-1].interpolation not in (
                "bilinear", "bicubic"):
            raise UserError(f"augment.groups.{i}: jitter_mode={specs[-1].jitter_mode} / "
                            f"interpolation={specs[-1].interpolation} is not allowed: use "
                            f"{' or '.join(JITTER_MODES)} / bilinear or bicubic")
    if augment.small_crops:
        size = augment.small_size or dataset.get("small_size")
        if not size:
            raise UserError(f"augment.small_crops={augment.small_crops} needs the size of the small "
                            f"crops, and dataset={dataset.name} sets none. Fix: add "
                            f"augment.small_size=N")
        specs.append(_resolved({**base, "crop_scale": augment.small_crop_scale}, {}, size,
                               augment.small_crops))
    return specs


def view_sizes(specs: List[ViewSpec]) -> List[int]:
    """The size of each view, in view order."""
    return [s.size for s in specs for _ in range(s.count)]
