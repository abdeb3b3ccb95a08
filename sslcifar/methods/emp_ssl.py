"""EMP-SSL (Tong et al., 2023, "EMP-SSL: Towards Self-Supervised Learning in One Training
Epoch"): many small patches of each image (20 by default) through one encoder; the coding
rate of each patch's batch is maximised and every patch pulled to the mean of its image's
patches (`sslcifar.losses.emp_ssl_loss`). No predictor, no momentum encoder.

As the authors' code (tsb0601/EMP-SSL bce1514c: main.py, model/model.py, dataset/aug.py):
a projector F -> 4096 -> 4096 -> 1024 with BatchNorm, unit-length outputs, eps 0.2, weight
200 on the invariance, patches of a quarter of the image (`augment=emp_ssl`). Their
evaluation, on features averaged over 128 patches of each image, is
`linear_eval.py protocol=emp_ssl`; they evaluate the projector's first layer (4096-d), we
the backbone, as every protocol here.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from ..distributed import gather_with_grad
from ..losses import emp_ssl_loss
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register


@dataclass
class EMPSSLConfig(ProjectorConfig):
    pass


@dataclass
class EMPSSLLossConfig(LossConfig):
    eps: float = declared("(0, inf)")          # the coding rate's precision (not squared)
    inv_coef: float = declared("[0, inf)")     # the invariance term's weight (patch_sim)


@register
class EMPSSL(Method):
    name = "emp_ssl"
    loss_name = "emp_ssl"
    Config = EMPSSLConfig
    Loss = EMPSSLLossConfig
    views = (2, None)

    def __init__(self, backbone, projector, eps: float, inv_coef: float):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.eps, self.inv_coef = eps, inv_coef

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "EMPSSL":
        backbone = cls.make_backbone(cfg)
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   cfg.loss.eps, cfg.loss.inv_coef)

    def forward(self, batch) -> dict:
        b, v = batch.views[0].shape[0], len(batch.views)
        h = self.encode(batch.views)                              # [V*B, F]
        z = F.normalize(self.projector(h), dim=1)                 # [V*B, D], unit rows
        per_image = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous())   # [N, V, D]
        loss = emp_ssl_loss(per_image.transpose(0, 1), self.eps, self.inv_coef)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
