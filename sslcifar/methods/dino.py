"""DINO (Caron et al., 2021): a student (backbone + DINO head) is trained to match, on every
crop, the centred and sharpened output of a teacher (an EMA of the student) on the global
crops. Multi-crop: the teacher sees the first two views, the student all of them."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from ..distributed import gather, gather_with_grad
from ..losses import DINOLoss
from ..ranges import declared
from ..schedule import cosine_scheduler, per_epoch
from .base import LossConfig, Method, MethodConfig, register, require
from .ema import CosineMomentumConfig, check_momentum_order, cosine_momentum, frozen_copy


class NormalizedLinear(nn.Module):
    """DINO's weight-normalised last layer, weight = g * v / ||v|| per output row (the
    names of torch's weight_norm: weight_g [K, 1], weight_v [K, D]). With norm_last_layer g
    stays 1 and is not trained: the prototypes are unit vectors."""

    def __init__(self, in_dim: int, out_dim: int, norm_last_layer: bool):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def forward(self, x):
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU, BatchNorm optional), L2 norm, then
    the normalised last layer to the K prototypes (DINO's vision_transformer.DINOHead)."""

    def __init__(self, in_dim, hidden_dim, bottleneck_dim, out_dim, num_layers=3, use_bn=False,
                 norm_last_layer=True):
        super().__init__()
        layers, dim = [], in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if use_bn else [])
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):                # DINO: truncated normal, std 0.02
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim, norm_last_layer)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=1))


@dataclass
class DINOConfig(MethodConfig, CosineMomentumConfig):
    hidden_dim: int = declared("[1, inf)")             # head MLP width (2048)
    bottleneck_dim: int = declared("[1, inf)")         # before the last layer (256)
    num_prototypes: int = declared("[1, inf)")         # K, the output dimension
    head_layers: int = declared("[1, inf)")            # linear layers before the last one (3)
    use_bn: bool = MISSING                # BatchNorm in the head MLP (DINO: false)
    norm_last_layer: bool = MISSING       # fix the prototypes' norm (weight_g = 1)
    freeze_last_layer_epochs: float = declared("[0, inf)")   # no update of the last layer for this long
    clip_grad: float = declared("[0, inf)")            # per-parameter gradient norm clip (0: off)


@dataclass
class DINOLossConfig(LossConfig):
    student_temp: float = declared("(0, inf)")
    teacher_temp: float = declared("(0, inf)")         # after the warm-up
    warmup_teacher_temp: float = declared("(0, inf)")  # at epoch 0
    warmup_teacher_temp_epochs: int = declared("[0, inf)")
    center_momentum: float = declared("[0, 1]")


@register
class DINO(Method):
    name = "dino"
    loss_name = "dino"
    Config = DINOConfig
    Loss = DINOLossConfig
    views = (2, None)
    same_size_views = False

    def __init__(self, backbone, head, criterion, clip_grad: float):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.backbone_t, self.head_t = frozen_copy(backbone), frozen_copy(head)   # the teacher
        self.criterion = criterion            # holds the centre [1, K]
        self.clip_grad = clip_grad

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "DINO":
        m, lc = cfg.method, cfg.loss
        backbone = cls.make_backbone(cfg)
        head = DINOHead(backbone.num_features, m.hidden_dim, m.bottleneck_dim, m.num_prototypes,
                        m.head_layers, m.use_bn, m.norm_last_layer)
        criterion = DINOLoss(m.num_prototypes, 2, lc.student_temp, lc.center_momentum)
        return cls(backbone, head, criterion, m.clip_grad)

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        lc, epochs = cfg.loss, total_steps // steps_per_epoch
        # the teacher temperature: a linear warm-up per epoch from warmup_teacher_temp, then
        # teacher_temp (DINO's teacher_temp_schedule, indexed by epoch)
        temp = cosine_scheduler(lc.teacher_temp, lc.teacher_temp, epochs,
                                lc.warmup_teacher_temp_epochs, warmup_start=lc.warmup_teacher_temp)
        frozen = torch.arange(total_steps) < cfg.method.freeze_last_layer_epochs * steps_per_epoch
        return {"momentum": cosine_momentum(cfg, total_steps),
                "teacher_temp": per_epoch(temp, steps_per_epoch),
                "last_layer_frozen": frozen.double()}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_t), (self.head, self.head_t)]

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum_order(cfg)
        require(view_sizes[0] == view_sizes[1], "augment.groups", "views 1 and 2",
                "DINO's teacher sees the first two views, the global crops: give them one size")

    def after_backward(self, now) -> None:
        if self.clip_grad > 0:              # DINO's clip_gradients: each parameter on its own
            for p in self.parameters():
                if p.grad is not None:
                    norm = p.grad.norm()
                    p.grad.mul_(torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0))
        if now["last_layer_frozen"]:
            for p in self.head.last_layer.parameters():     # as cancel_gradients_last_layer
                p.grad = None

    def forward(self, batch) -> dict:
        views = batch.views
        b, v = views[0].shape[0], len(views)
        h = self.encode(views)                                    # [V*B, F]
        student = self.head(h)                                    # [V*B, K]
        with torch.no_grad():
            teacher = self.head_t(self.encode(views[:2], self.backbone_t))   # [2B, K]
        # the global batch, crop-major (crop v of every image of every rank together)
        student = gather_with_grad(student.view(v, b, -1).transpose(0, 1).contiguous())
        student = student.transpose(0, 1).flatten(0, 1)           # [V*N, K]
        teacher = gather(teacher.view(2, b, -1).transpose(0, 1).contiguous())
        teacher = teacher.transpose(0, 1).flatten(0, 1)           # [2N, K]
        temp = batch.now["teacher_temp"]
        loss = self.criterion(student, teacher, temp)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(student[:b]),
                "teacher_temp": torch.tensor(temp, device=h.device)}
