"""Methods: each one small nn.Module with

    forward(views: list of [B, 3, S, S], index: [B], labels: [B]) -> dict

returning at least `loss` (a scalar to minimise) and `features` (detached
backbone features of the first view, [B, F], for the online probe); any
other entry is a scalar tensor logged as a metric. Each exposes `.backbone`,
the encoder that evaluation keeps.
"""
from torch import nn

from ..losses import SogCLRLoss
from ..models import build_backbone, projection_mlp, split_batchnorm
from .moco import MoCo
from .simclr import SimCLR
from .sogclr import SogCLR
from .supcon import SupCon
from .supervised import Supervised

METHODS = ("simclr", "moco", "sogclr", "supcon", "supervised")
# the loss each method is written for (the method's YAML selects it)
LOSS_OF = {"simclr": "nt_xent", "moco": "moco_infonce", "sogclr": "sogclr",
           "supcon": "supcon", "supervised": "cross_entropy"}
NEEDS_LABELS = ("supcon", "supervised")


def build_method(cfg, num_train: int, num_classes: int) -> nn.Module:
    """The method module described by cfg.method / cfg.backbone / cfg.loss."""
    m, loss = cfg.method, cfg.loss
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.width, cfg.backbone.stem,
                              cfg.dataset.size)
    if m.name == "supervised":
        return Supervised(backbone, num_classes)
    projector = projection_mlp(backbone.num_features, m.proj_hidden_dim, m.proj_out_dim,
                               m.proj_layers, m.proj_bn, m.proj_last_bn)
    if m.name == "simclr":
        return SimCLR(backbone, projector, loss.temperature)
    if m.name == "sogclr":
        return SogCLR(backbone, projector, SogCLRLoss(num_train, loss.gamma, loss.temperature))
    if m.name == "supcon":
        return SupCon(backbone, projector, loss.temperature, loss.base_temperature)
    if m.name == "moco":
        if m.bn_splits > 1:
            split_batchnorm(backbone, m.bn_splits)      # before MoCo copies it for the keys
        return MoCo(backbone, projector, m.queue_size, m.momentum, loss.temperature,
                    m.symmetric, m.shuffle_bn)
    raise ValueError(f"method.name={m.name!r} is not one of {', '.join(METHODS)}")
