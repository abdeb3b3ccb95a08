"""All4One (Estepa et al., ICCV 2023, "All4One: Symbiotic Neighbour Contrastive Learning via
Self-Attention and Redundancy Reduction"): three objectives on one support set of momentum
projections,
- NNCLR's neighbour contrast: the nearest neighbour of one view's momentum projection
  against the other view's prediction (T 0.2 in the CIFAR recipe);
- a centroid contrast: a small transformer summarises each image's k nearest neighbours
  (the first output token), and is contrasted (T 0.1) with the same transformer's summary
  of the other view's second prediction followed by its k-1 nearest neighbours (the
  "shift" sequence);
- a redundancy-reduction term (`sslcifar.losses.all4one_redundancy`), weighted 10;
summed with weights 0.5 each, as the paper.

Semantics of solo-learn 9187ea39 (solo/methods/all4one.py, the authors' own code merged
there): a 3-layer projector ending in affine BatchNorm, two predictors, a momentum
backbone and projector (BYOL's cosine tau, after each step), a 3-layer transformer
encoder (8 heads, feed-forward 2D, dropout 0.1) at its own base lr 0.1, and the sinusoidal
encoding of the `positional_encodings` package's PositionalEncodingPermute1D(k) added to
each sequence: it indexes the D embedding dimensions as positions and the k slots as
channels, as that code does (written out here, `slot_encoding`; no dependency).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather, gather_with_grad
from ..losses import all4one_redundancy, nnclr_loss
from ..models import projection_mlp
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register, require
from .ema import CosineMomentumConfig, check_momentum_order, cosine_momentum, frozen_copy
from .support_set import SupportSet, SupportSetConfig, check_support_set


@dataclass
class All4OneConfig(ProjectorConfig, CosineMomentumConfig, SupportSetConfig):
    pred_hidden_dim: int = declared("[1, inf)")        # both predictors: proj_out_dim -> this -> proj_out_dim
    neighbours: int = declared("[2, inf)")             # k: the sequence of neighbours the transformer reads
    transformer_layers: int = declared("[1, inf)")
    transformer_heads: int = declared("[1, inf)")      # must divide proj_out_dim
    transformer_dropout: float = declared("[0, 1)")
    transformer_lr: float = declared("(0, inf)")       # the transformer's own base lr (not scaled by the batch)


@dataclass
class All4OneLossConfig(TemperatureConfig):
    # temperature: of the neighbour contrast (NNCLR's term)
    centroid_temperature: float = declared("(0, inf)")     # of the transformer's centroid contrast
    nnclr_weight: float = declared("[0, inf)")
    centroid_weight: float = declared("[0, inf)")
    redundancy_weight: float = declared("[0, inf)")


def slot_encoding(k: int, d: int) -> torch.Tensor:
    """[k, d]: entry (c, x) is the sinusoid of position x (an embedding dimension) at channel c
    (a sequence slot), with the channels rounded up to even: inv_freq_i = 10000^(-2i / k'),
    channel 2i = sin(x inv_freq_i), 2i+1 = cos(x inv_freq_i), k' = 2 ceil(k / 2)."""
    k_even = 2 * ((k + 1) // 2)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, k_even, 2, dtype=torch.float64) / k_even)
    angle = torch.arange(d, dtype=torch.float64)[:, None] * inv_freq[None, :]   # [d, k'/2]
    emb = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)          # [d, k']
    return emb[:, :k].T.contiguous()


@register
class All4One(Method):
    name = "all4one"
    loss_name = "all4one"
    Config = All4OneConfig
    Loss = All4OneLossConfig

    def __init__(self, backbone, projector, predictor, predictor2, transformer, queue_size: int,
                 k: int, transformer_lr: float, loss):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.predictor, self.predictor2, self.transformer = predictor, predictor2, transformer
        self.backbone_t, self.projector_t = frozen_copy(backbone), frozen_copy(projector)
        dim = predictor[-1].out_features
        self.support = SupportSet(queue_size, dim)
        self.register_buffer("slots", slot_encoding(k, dim).float(), persistent=False)
        self.k, self.transformer_lr = k, transformer_lr
        self.t, self.t_centroid = loss.temperature, loss.centroid_temperature
        self.weights = (loss.nnclr_weight, loss.centroid_weight, loss.redundancy_weight)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "All4One":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = projection_mlp(backbone.num_features, m.proj_hidden_dim, m.proj_out_dim,
                                   m.proj_layers, m.proj_bn, m.proj_last_bn, last_bn_affine=True)
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        predictor2 = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        layer = nn.TransformerEncoderLayer(m.proj_out_dim, m.transformer_heads, 2 * m.proj_out_dim,
                                           m.transformer_dropout, batch_first=True)
        transformer = nn.TransformerEncoder(layer, m.transformer_layers, enable_nested_tensor=False)
        return cls(backbone, projector, predictor, predictor2, transformer, m.queue_size,
                   m.neighbours, m.transformer_lr, cfg.loss)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum_order(cfg)
        check_support_set(cfg)
        m = cfg.method
        require(m.proj_out_dim % m.transformer_heads == 0, "method.transformer_heads",
                m.transformer_heads, f"must divide method.proj_out_dim ({m.proj_out_dim})")
        require(m.neighbours <= m.queue_size, "method.neighbours", m.neighbours,
                f"must be <= method.queue_size ({m.queue_size})")

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        return {"momentum": cosine_momentum(cfg, total_steps)}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_t), (self.projector, self.projector_t)]

    def param_groups(self):
        transformer = {id(p) for p in self.transformer.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in transformer]
        return [{"params": rest},
                {"params": list(self.transformer.parameters()), "base_lr": self.transformer_lr}]

    def _summary(self, sequence: torch.Tensor) -> torch.Tensor:
        """The transformer's first output token [N, D] of a sequence [N, k, D] + slot encoding."""
        return self.transformer(sequence + self.slots.to(sequence.dtype))[:, 0]

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)                              # [2B, F]
        z = self.projector(h)                                     # [2B, D]
        p, p_2 = self.predictor(z), self.predictor2(z)
        with torch.no_grad():
            zt = F.normalize(self.projector_t(self.encode(batch.views, self.backbone_t)), dim=1)
        # the k nearest momentum projections of each view, in the queue before this step
        idx1, nn1 = self.support.neighbours(zt[:b], self.k)
        _, nn2 = self.support.neighbours(zt[b:], self.k)
        # centroid contrast: neighbours' summary against the shifted sequence of the other view
        rich1, rich2 = self._summary(nn1), self._summary(nn2)
        shift1 = self._summary(torch.cat([p_2[:b, None], nn1[:, :-1]], dim=1))
        shift2 = self._summary(torch.cat([p_2[b:, None], nn2[:, :-1]], dim=1))
        rich1, rich2 = gather_with_grad(rich1), gather_with_grad(rich2)
        shift1, shift2 = gather_with_grad(shift1), gather_with_grad(shift2)
        centroid = (nnclr_loss(rich1, shift2, self.t_centroid) + nnclr_loss(rich2, shift1, self.t_centroid)) / 2
        # NNCLR's term on the nearest neighbour
        p1, p2 = gather_with_grad(p[:b]), gather_with_grad(p[b:])
        first1, first2 = gather(nn1[:, 0]), gather(nn2[:, 0])
        neighbour = (nnclr_loss(first1, p2, self.t) + nnclr_loss(first2, p1, self.t)) / 2
        # redundancy reduction over the global batch
        zg1, zg2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])
        redundancy = all4one_redundancy(gather(zt[:b]), gather(zt[b:]), zg1, zg2)
        w_nn, w_centroid, w_red = self.weights
        loss = w_nn * neighbour + w_centroid * centroid + w_red * redundancy
        nn_acc = self.support.neighbour_accuracy(idx1[:, 0], batch.labels)
        self.support.push(zt[:b], batch.labels)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
                "nn_acc": nn_acc, "loss_neighbour": neighbour.detach(),
                "loss_centroid": centroid.detach(), "loss_redundancy": redundancy.detach()}
