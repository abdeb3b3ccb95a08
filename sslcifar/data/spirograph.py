"""Spirograph: the generated data set of Foster et al., 'Improving Transformation
Invariance in Contrastive Representation Learning' (ICLR 2021).

Each sample has four *generative* parameters that define it and that a good
representation should capture: m ~ U(2, 5), b ~ U(0.1, 1.1), sigma ~ U(0.25, 1)
and the foreground red ~ U(0.4, 1). Each *view* re-draws six nuisance
parameters: h ~ U(0.5, 2.5), foreground green and blue ~ U(0.4, 1), background
red, green and blue ~ U(0, 0.6). Re-drawing the nuisance is the augmentation.

`render` is differentiable in both parameter sets, so methods can take
gradients through the data generation (as the invariance-by-gradient method does).
"""
import math
from typing import List, Optional

import torch

IMAGE_SIZE = 32
NUM_POINTS = 40             # points along the curve, t in [0, 2*pi] with both ends
GRID_EXTENT = 6.0           # the image covers [-6, 6] x [-6, 6]
DATA_LOW = (2.0, 0.1, 0.25, 0.4)       # m, b, sigma, foreground red
DATA_HIGH = (5.0, 1.1, 1.0, 1.0)
# nuisance order: h, back red, fore green, back green, fore blue, back blue
NUISANCE_LOW = (0.5, 0.0, 0.4, 0.0, 0.4, 0.0)
NUISANCE_HIGH = (2.5, 0.6, 1.0, 0.6, 1.0, 0.6)


def render(data_params: torch.Tensor, nuisance_params: torch.Tensor) -> torch.Tensor:
    """Draw spirographs.

    Args:
        data_params: [N, 4] (m, b, sigma, foreground red).
        nuisance_params: [N, 6] (h, background red, foreground green,
            background green, foreground blue, background blue).

    Returns:
        [N, 3, 32, 32] images in [0, 1], differentiable in both inputs.
    """
    m, b, sigma, fore_r = data_params.unbind(1)
    h, back_r, fore_g, back_g, fore_b, back_b = nuisance_params.unbind(1)
    dtype, device = data_params.dtype, data_params.device
    t = torch.linspace(0, 2 * math.pi, NUM_POINTS, dtype=dtype, device=device)      # [T]
    mh = (m - h)[:, None]                                                             # [N, 1]
    x = mh * torch.cos(t) + h[:, None] * torch.cos(t * mh / b[:, None])               # [N, T]
    y = mh * torch.sin(t) - h[:, None] * torch.sin(t * mh / b[:, None])
    g = torch.linspace(-GRID_EXTENT, GRID_EXTENT, IMAGE_SIZE, dtype=dtype, device=device)
    # v[i, j] = mean_k exp(-((g_i - x_k)^2 + (g_j - y_k)^2) / sigma), rows follow x,
    # columns y. The Gaussian factorises, so the mean over k is a batched matmul
    # of [N, S, T] by [N, T, S] instead of an [N, S, S, T] tensor.
    s = sigma[:, None, None]
    ex = torch.exp(-(g[None, :, None] - x[:, None, :]) ** 2 / s)                       # [N, S, T]
    ey = torch.exp(-(g[None, :, None] - y[:, None, :]) ** 2 / s)                       # [N, S, T]
    v = ex @ ey.transpose(1, 2) / NUM_POINTS                                          # [N, S, S]
    v = v / (v.amax(dim=2, keepdim=True) + 1e-8)     # each row by its own max, as the original
    fore = torch.stack([fore_r, fore_g, fore_b], 1)[:, :, None, None]                 # [N, 3, 1, 1]
    back = torch.stack([back_r, back_g, back_b], 1)[:, :, None, None]
    v = v[:, None]
    return v * fore + (1 - v) * back


def _uniform(n: int, low, high, generator: Optional[torch.Generator], device) -> torch.Tensor:
    low_t = torch.tensor(low, device=device)
    high_t = torch.tensor(high, device=device)
    u = torch.rand(n, len(low), generator=generator, device=device)
    return low_t + (high_t - low_t) * u


def sample_data_params(n: int, generator=None, device="cpu") -> torch.Tensor:
    """[n, 4] generative parameters."""
    return _uniform(n, DATA_LOW, DATA_HIGH, generator, device)


def sample_nuisance_params(n: int, generator=None, device="cpu") -> torch.Tensor:
    """[n, 6] nuisance parameters (one fresh draw per view)."""
    return _uniform(n, NUISANCE_LOW, NUISANCE_HIGH, generator, device)


class SpirographSource:
    """Spirograph as a data source: fixed generative parameters per sample, the nuisance
    re-drawn per view (that *is* the augmentation). Views carry their nuisance
    parameters (`params[v]["nuisance"]` [B, 6]), and `replay` re-renders a view from
    changed ones, differentiably (the renderer is)."""
    task = "regression"
    classes: List[str] = []
    has_labels = False
    on_host = False

    def __init__(self, num_samples: int, seed: int, device, mean, std, num_views: int = 2):
        g = torch.Generator().manual_seed(seed)
        self.device = device
        self.num_views = num_views
        self.params = sample_data_params(num_samples, g).to(device)                   # [N, 4]
        # one fixed nuisance draw per sample for the un-augmented (evaluation) image
        self.fixed_nuisance = sample_nuisance_params(num_samples, g).to(device)
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

    def _render(self, data_params: torch.Tensor, nuisance: torch.Tensor) -> torch.Tensor:
        return (render(data_params, nuisance) - self.mean) / self.std

    def views(self, index: torch.Tensor, generator: torch.Generator,
              host_index: Optional[torch.Tensor] = None):
        """(views, params, replay, nuisance): `num_views` renderings, each with fresh
        nuisance parameters."""
        from .batch import Nuisance
        p = self.params[index]
        b = len(index)
        views, params = [], []
        for _ in range(self.num_views):
            nuisance = sample_nuisance_params(b, generator, self.device)
            views.append(self._render(p, nuisance))
            params.append({"nuisance": nuisance})

        def draw(v, m, n, g):
            return sample_nuisance_params(m * n, g, self.device).view(m, n, -1)
        return views, params, lambda v, q: self._render(p, q["nuisance"]), Nuisance("nuisance", draw)

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        return self._render(self.params[index], self.fixed_nuisance[index])
