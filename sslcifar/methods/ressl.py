"""ReSSL (Zheng et al., NeurIPS 2021, "ReSSL: Relational Self-Supervised Learning with Weak
Augmentation"): a momentum teacher embeds a weakly augmented view, the student a strongly
augmented one; both are compared with a queue of the teacher's earlier embeddings, and the
student's similarity distribution is trained towards the teacher's sharper one.

Semantics of solo-learn 9187ea39 (solo/methods/ressl.py): view 1 is the student's (strong),
view 2 the teacher's (weak: crop and flip only, conf/augment/ressl.yaml), a projector
without BatchNorm, the teacher an EMA with BYOL's cosine momentum after each step, the
loss on the queue as it was before this step's teacher embeddings enter it. The queue is
`sslcifar.methods.support_set.SupportSet` (the same FIFO queue as NNCLR's).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..distributed import gather, gather_with_grad
from ..losses import ressl_loss
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register
from .ema import CosineMomentumConfig, check_momentum_order, cosine_momentum, frozen_copy
from .support_set import SupportSet, SupportSetConfig, check_support_set


@dataclass
class ReSSLConfig(ProjectorConfig, CosineMomentumConfig, SupportSetConfig):
    pass


@dataclass
class ReSSLLossConfig(LossConfig):
    student_temp: float = declared("(0, inf)")        # T_s of the strong view's distribution
    teacher_temp: float = declared("(0, inf)")        # T_t of the weak view's (sharper) target


@register
class ReSSL(Method):
    name = "ressl"
    loss_name = "ressl"
    Config = ReSSLConfig
    Loss = ReSSLLossConfig

    def __init__(self, backbone, projector, queue_size: int, student_temp: float,
                 teacher_temp: float):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.backbone_t, self.projector_t = frozen_copy(backbone), frozen_copy(projector)
        self.queue = SupportSet(queue_size, projector[-1].out_features)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "ReSSL":
        backbone = cls.make_backbone(cfg)
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   cfg.method.queue_size, cfg.loss.student_temp, cfg.loss.teacher_temp)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum_order(cfg)
        check_support_set(cfg)

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        return {"momentum": cosine_momentum(cfg, total_steps)}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_t), (self.projector, self.projector_t)]

    def forward(self, batch) -> dict:
        strong, weak = batch.views
        h = self.backbone(strong)
        z = self.projector(h)
        q = F.normalize(z, dim=1)                                 # student, [B, D]
        with torch.no_grad():
            k = F.normalize(self.projector_t(self.backbone_t(weak)), dim=1)     # teacher
        loss = ressl_loss(gather_with_grad(q), gather(k), self.queue.queue.clone(),
                          self.student_temp, self.teacher_temp)
        self.queue.push(k, batch.labels)
        return {"loss": loss, "features": h.detach(), "z_std": self.collapse_std(z)}
