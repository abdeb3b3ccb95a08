"""Cross-entropy baseline (SupContrast's SupCE): the same backbone, a linear classifier."""
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather, gather_with_grad
from .base import LossConfig, Method, MethodConfig, register


@dataclass
class SupervisedConfig(MethodConfig):
    pass


@dataclass
class CrossEntropyConfig(LossConfig):
    pass


@register
class Supervised(Method):
    name = "supervised"
    loss_name = "cross_entropy"
    Config = SupervisedConfig
    Loss = CrossEntropyConfig
    needs_labels = True
    views = (1, 1)
    min_batch = (1, "")

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.num_features, num_classes)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "Supervised":
        return cls(cls.make_backbone(cfg), num_classes)

    def forward(self, batch) -> dict:
        labels = batch.labels
        h = self.backbone(batch.views[0])
        # the mean over the global batch: DDP's average of per-rank means has the same
        # gradient, and the logged loss and accuracy are then the global ones too
        logits, labels = gather_with_grad(self.classifier(h)), gather(labels)
        loss = F.cross_entropy(logits, labels)
        top1 = 100.0 * (logits.argmax(1) == labels).float().mean()       # %, as every accuracy
        return {"loss": loss, "features": h.detach(), "train_top1": top1.detach(),
                "z_std": self.collapse_std(h)}

    @torch.no_grad()
    def evaluate(self, test_features: torch.Tensor, test_labels: torch.Tensor) -> Dict[str, float]:
        """Top-1 (%) of this classifier on the un-augmented test images' backbone features
        (BatchNorm in eval mode, as for any test), the number SupCE reports."""
        logits = self.classifier(test_features)
        return {"test_top1": 100.0 * (logits.argmax(1) == test_labels).float().mean().item()}
