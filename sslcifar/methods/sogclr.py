"""SogCLR (Yuan et al., ICML 2022): SimCLR's encoder with the dynamic
contrastive loss, whose per-sample estimator u is indexed by dataset index."""
from typing import List, Optional

import torch
from torch import nn

from ..distributed import gather, gather_with_grad
from ..losses import SogCLRLoss


class SogCLR(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: SogCLRLoss):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.criterion = loss          # holds u [num_samples, 1]: saved with the model

    def forward(self, views: List[torch.Tensor], index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> dict:
        b = views[0].shape[0]
        h = self.backbone(torch.cat(views))
        z = self.projector(h)
        # every rank sees the global batch and its indices, so u stays identical everywhere
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])
        loss = self.criterion(z1, z2, gather(index))
        return {"loss": loss, "features": h[:b].detach()}
