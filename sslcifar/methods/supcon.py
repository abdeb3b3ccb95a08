"""SupCon (Khosla et al., 2020): positives are all views of the same class."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather, gather_with_grad
from ..losses import supcon


class SupCon(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module,
                 temperature: float, base_temperature: float):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, views: List[torch.Tensor], index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> dict:
        b, v = views[0].shape[0], len(views)
        h = self.backbone(torch.cat(views))
        z = F.normalize(self.projector(h), dim=1)                 # [V*B, D]
        z = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous())  # [N, V, D]
        loss = supcon(z, gather(labels), self.temperature, self.base_temperature)
        return {"loss": loss, "features": h[:b].detach()}
