"""Cross-entropy baseline (SupContrast's SupCE): the same backbone, a linear classifier."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


class Supervised(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.num_features, num_classes)

    def forward(self, views: List[torch.Tensor], index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> dict:
        h = self.backbone(views[0])
        logits = self.classifier(h)
        # DDP averages gradients over ranks: the mean over the local batch gives
        # the gradient of the global-batch mean, no gather needed
        loss = F.cross_entropy(logits, labels)
        top1 = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss, "features": h.detach(), "train_top1": top1.detach()}

    @torch.no_grad()
    def evaluate(self, test_source, batch_size: int = 512) -> Dict[str, float]:
        """Top-1 of this classifier on the un-augmented test images, the number SupCE
        reports (BatchNorm in eval mode, as for any test)."""
        from ..linear_eval import extract
        was_training = self.training
        index = torch.arange(len(test_source), device=test_source.device)
        logits = self.classifier(extract(self.backbone, test_source, index, batch_size))
        self.train(was_training)
        top1 = (logits.argmax(1) == test_source.labels).float().mean().item()
        return {"test_top1": 100.0 * top1}
