"""Measured invariance: how much an encoder's representation moves when the augmentation's
nuisance parameters do, on held-out images. It is the invariance gradient penalty's value
(`sslcifar.losses.gradient_penalty`, unclamped), usable on any encoder, so the effect of
training with the penalty can be seen: lower is more invariant."""
import torch
from torch import nn

from .losses import gradient_penalty


def measure_invariance(backbone: nn.Module, source, num_images: int = 512, samples: int = 100,
                       batch_size: int = 128, seed: int = 0, normalize: bool = True) -> float:
    """The mean gradient penalty over the first `num_images` images of `source` (a source
    that makes views: test split built with augment=True), view 1 of each, with `samples`
    fresh draws of its nuisance parameters, BatchNorm in eval mode. Gradients w.r.t. the
    nuisance parameters only: the encoder is not changed."""
    was_training = backbone.training
    backbone.eval()
    n = min(num_images, len(source))
    total, count = 0.0, 0
    g = torch.Generator(device=source.device).manual_seed(seed)
    try:
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n), device=source.device)
            views, params, replay, nuisance = source.views(index, g)
            theta = params[0][nuisance.key].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                h = backbone(replay(0, {**params[0], nuisance.key: theta})).float()
                extra = nuisance.draw(0, samples, len(index), g).to(theta.dtype)
                penalty = gradient_penalty(h, theta, extra, normalize=normalize,
                                           upper_limit=None, generator=g)
            total += penalty.item() * len(index)
            count += len(index)
    finally:
        backbone.train(was_training)
    return total / count
