"""MMCR (Yerxa et al., NeurIPS 2023, "Learning Efficient Coding of Natural Images with
Maximum Manifold Capacity Representations"): many views of each image through one network;
the loss maximises the nuclear norm of the matrix of the images' view centroids
(`sslcifar.losses.mmcr_loss`). No predictor, no momentum encoder, no negatives.

As the authors' CIFAR code (ThomasYerxa/mmcr 287db455, mmcr/cifar_stl/): a projector
F -> 512 -> 128 with BatchNorm after the hidden layer and no biases, lmbda 0; their recipe
(ResNet-50, 32 images x 40 views, Adam 1e-3) is experiment=mmcr_cifar10.
"""
from dataclasses import dataclass

from ..distributed import gather_with_grad
from ..losses import mmcr_loss
from ..models import projection_mlp
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register


@dataclass
class MMCRConfig(ProjectorConfig):
    pass


@dataclass
class MMCRLossConfig(LossConfig):
    lmbda: float = declared("[0, inf)")    # weight of each image's own nuclear norm (the local term)


@register
class MMCR(Method):
    name = "mmcr"
    loss_name = "mmcr"
    Config = MMCRConfig
    Loss = MMCRLossConfig
    views = (2, None)

    def __init__(self, backbone, projector, lmbda: float):
        super().__init__()
        self.backbone, self.projector, self.lmbda = backbone, projector, lmbda

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "MMCR":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        # the authors' projector has no bias in any layer
        projector = projection_mlp(backbone.num_features, m.proj_hidden_dim, m.proj_out_dim,
                                   m.proj_layers, m.proj_bn, m.proj_last_bn, last_bias=False)
        return cls(backbone, projector, cfg.loss.lmbda)

    def forward(self, batch) -> dict:
        b, v = batch.views[0].shape[0], len(batch.views)
        h = self.encode(batch.views)                              # [V*B, F]
        z = self.projector(h)                                     # [V*B, D]
        per_image = z.view(v, b, -1).transpose(0, 1).contiguous()     # [B, V, D]
        loss = mmcr_loss(gather_with_grad(per_image), self.lmbda)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
