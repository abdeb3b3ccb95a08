"""What a training step receives: the views of a batch of images and how they were made."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from ..schedule import Now

Params = Dict[str, torch.Tensor]


@dataclass
class Batch:
    """One step's data on the compute device.

    views:  V tensors [b, 3, S_v, S_v], normalised (S_v: the size of the view's group;
            views of one group are consecutive)
    index:  [b] int64 dataset indices of the images
    labels: [b] int64 class labels (-1 where the split has none)
    params: V dicts of [b, ...] tensors: the parameters that made each view (crop boxes,
            flips, jitter factors and order, ... for images, see
            `sslcifar.data.augment.sample_params`; `nuisance` [b, 6] for Spirograph).
            Empty when the pipeline cannot hand them back (pipeline=torchvision).
    replay: replay(v, params) re-makes view v from (changed) parameters, differentiably
            in their float factors; None when the pipeline cannot.
    nuisance: which parameters a view is differentiable in, and fresh draws of them (the
            invariance gradient penalty); None when the pipeline cannot.
    now:    the step it is trained at, its epoch and the method's scheduled values
            (`sslcifar.schedule.Now`), set by the loop just before the forward.
    """
    views: List[torch.Tensor]
    index: torch.Tensor
    labels: torch.Tensor
    params: List[Params] = field(default_factory=list)
    replay: Optional[Callable[[int, Params], torch.Tensor]] = None
    nuisance: Optional["Nuisance"] = None
    now: Now = field(default_factory=Now)

    def __len__(self) -> int:
        return self.index.shape[0]


@dataclass
class Nuisance:
    """The nuisance parameters of the views: `key` names their entry in Batch.params
    (`jitter` [B, 4] for images: brightness, contrast, saturation, hue; `nuisance` [B, 6]
    for Spirograph), and draw(view, m, n, generator) -> [m, n, P] draws m fresh sets of them
    for n images from the augmentation's distribution."""
    key: str
    draw: Callable[[int, int, int, torch.Generator], torch.Tensor]
