"""VICRegL (Bardes, Ponce & LeCun, NeurIPS 2022): VICReg on the pooled embeddings plus VICReg
on the positions of the backbone's last feature map, each position paired with the other
view's position nearest to it in the original image and with the one nearest in embedding
space (`sslcifar.losses.vicregl_loss`, alpha 0.75 global + 0.25 local).

As the authors' code (facebookresearch/VICRegL at 803ae4c, main_vicregl.py): a global
projector on the pooled features (Linear-BN-ReLU layers, the last Linear without bias), a
"maps" projector of the same form applied to every position of the map (BatchNorm over all
positions), and each position's location the centre of its cell of the crop box. Where a
position lies comes from the view's crop box and flip (`batch.params`), so the views must be
made by our own pipelines (device or stream), not torchvision's. The flip is ignored by
default, as the authors' `--no-flip-grid 1`; method.flip_grid=true mirrors the grid of a
flipped view (lightly's). As every method here, views of one size share a backbone pass (the
authors run one pass per view) and the losses are computed on the global batch.
"""
from dataclasses import dataclass
from typing import List

import torch
from omegaconf import MISSING

from .. import distributed as dist
from ..errors import UserError
from ..losses import location_grid, vicregl_loss
from ..models import projection_mlp
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register, require


@dataclass
class VICRegLConfig(ProjectorConfig):
    maps_hidden_dim: int = declared("[1, inf)")   # the maps projector's hidden width
    maps_out_dim: int = declared("[1, inf)")      # its output: each position's embedding
    maps_layers: int = declared("[1, inf)")       # its linear layers
    flip_grid: bool = MISSING                      # mirror a flipped view's location grid


@dataclass
class VICRegLLossConfig(LossConfig):
    sim_coeff: float = declared("[0, inf)")       # invariance (MSE) weight
    std_coeff: float = declared("[0, inf)")       # variance weight
    cov_coeff: float = declared("[0, inf)")       # covariance weight
    alpha: float = declared("[0, 1]")             # the global loss's weight; local: 1 - alpha
    num_matches: List[int] = declared("[1, inf)", length=2)   # location matches kept a->b, b->a
    l2_all_matches: bool = MISSING                # feature matching keeps every position


@register
class VICRegL(Method):
    name = "vicregl"
    loss_name = "vicregl"
    Config = VICRegLConfig
    Loss = VICRegLLossConfig
    views = (2, None)
    same_size_views = False
    needs_feature_map = True

    def __init__(self, backbone, projector, maps_projector, num_global: int, loss_cfg,
                 flip_grid: bool):
        super().__init__()
        self.backbone, self.projector, self.maps_projector = backbone, projector, maps_projector
        self.num_global, self.flip_grid = num_global, flip_grid
        lc = loss_cfg
        self.loss_args = dict(alpha=lc.alpha, sim_coeff=lc.sim_coeff, std_coeff=lc.std_coeff,
                              cov_coeff=lc.cov_coeff, num_matches=tuple(lc.num_matches),
                              l2_all_matches=lc.l2_all_matches)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "VICRegL":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        c = backbone.num_features
        # the authors' utils.MLP: Linear-BN-ReLU ..., the last Linear without bias
        projector = projection_mlp(c, m.proj_hidden_dim, m.proj_out_dim, m.proj_layers,
                                   m.proj_bn, m.proj_last_bn, last_bias=False)
        maps = projection_mlp(c, m.maps_hidden_dim, m.maps_out_dim, m.maps_layers, True, False,
                              last_bias=False)
        num_global = sum(g.count for g in cfg.augment.groups)
        return cls(backbone, projector, maps, num_global, cfg.loss, m.flip_grid)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        require(cfg.dataset.name != "spirograph", "dataset", "spirograph",
                "VICRegL locates feature-map positions by the views' crop boxes, and Spirograph's "
                "views are rendered, not cropped: use an image data set")
        require(cfg.dataset.pipeline != "torchvision", "dataset.pipeline", "torchvision",
                "VICRegL needs each view's crop box, which torchvision's pipeline does not hand "
                "back: use auto, device or stream")

    def _grids(self, batch, maps) -> List[torch.Tensor]:
        if not batch.params or "box" not in batch.params[0]:
            raise UserError("method=vicregl needs the crop boxes of the views, and this data "
                            "pipeline gives none (Spirograph, or pipeline=torchvision). Fix: "
                            "an image data set with dataset.pipeline=device or stream")
        return [location_grid(p["box"], p["flip"], *fm.shape[-2:], self.flip_grid)
                for p, fm in zip(batch.params, maps)]

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        fmaps = self.encode_maps(batch.views)                       # V x [b, C, h_v, w_v]
        grids = self._grids(batch, fmaps)                           # V x [b, h_v*w_v, 2]
        h = torch.cat([self.backbone.pool(f) for f in fmaps])       # [V*b, C]
        z = self.projector(h).split(b)                               # V x [b, D]
        # every position of every view through the maps projector at once: [sum b*S_v, C]
        positions = [f.flatten(2).transpose(1, 2) for f in fmaps]   # V x [b, S_v, C]
        sizes = [p.shape[1] for p in positions]
        e = self.maps_projector(torch.cat([p.reshape(-1, p.shape[2]) for p in positions]))
        local = [x.view(b, s, -1) for x, s in zip(e.split([b * s for s in sizes]), sizes)]
        loss = vicregl_loss([dist.gather_with_grad(x) for x in z],
                            [dist.gather_with_grad(x) for x in local],
                            [dist.gather(g) for g in grids], self.num_global, **self.loss_args)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[0])}
