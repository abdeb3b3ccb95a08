"""SimCLR (Chen et al., 2020): two views through one encoder, NT-Xent over the batch."""
from typing import List, Optional

import torch
from torch import nn

from ..distributed import gather_with_grad
from ..losses import nt_xent


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module, temperature: float):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.temperature = temperature

    def forward(self, views: List[torch.Tensor], index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> dict:
        b = views[0].shape[0]
        # one pass over both views: BatchNorm statistics over all 2B images
        h = self.backbone(torch.cat(views))                       # [2B, F]
        z = self.projector(h)                                     # [2B, D]
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])  # [2B_global/2, D] each
        loss = nt_xent(z1, z2, self.temperature)
        return {"loss": loss, "features": h[:b].detach()}
