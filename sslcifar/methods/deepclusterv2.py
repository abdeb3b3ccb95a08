"""DeepCluster V2 (Caron et al., 2020, in the SwAV paper "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", sec. 3 and appendix A): a memory bank holds
each image's embeddings from the last epoch; at each epoch's start, spherical k-means on
the bank (several prototype sets: 3 x 3000 on CIFAR) sets the prototypes (the centroids)
and each image's target (its cluster); the loss is the cross-entropy between the
prototype scores / T and those targets.

Semantics are the authors' (facebookresearch/swav 06b1b7c, main_deepclusterv2.py), which
solo-learn 9187ea39 (solo/methods/deepclusterv2.py, solo/utils/kmeans.py) follows except
where noted:
- the bank holds, per image, the unit embeddings of the crops used for assignment (the
  two global crops, views 0 and 1) from its last forward pass, written from the gathered
  global batch at its dataset index (every rank keeps the same, whole bank);
- at the first step of each epoch, prototype set h is k-means of bank crop h mod 2
  (`losses.spherical_kmeans`: the authors' init from random bank rows, 10 iterations and
  a last assignment step), run on the bank's device identically on every rank, its draws
  from a generator seeded by (seed, epoch); only the rows written during the last epoch
  are clustered (the authors' bank is exactly those), the other images get no target;
- the prototypes are the centroids and are never trained (the authors' default
  freeze_prototypes_niters=1e10; solo-learn's requires_grad=False);
- every crop (multi-crop included) is trained towards its image's cluster, loss
  averaged over the prototype sets (`losses.deepclusterv2_loss`); loss_crops=global
  trains the two global crops only (solo-learn, which passes the large crops alone);
- epoch 0 (bank_init=forward): the authors fill the bank before training with one
  gradient-free pass of the random network over the data (`init_memory`, BatchNorm in
  training mode). Here the loop owns time, so that pass is epoch 0: its forward passes
  fill the bank, no image has a target yet (loss 0), and no parameter moves (gradients
  dropped: the optimizer skips every parameter); the first k-means runs at epoch 1's
  first step. The pass costs epoch 0 of the run's schedule. solo-learn does the same in
  effect: its epoch 0 has only ignored targets (a NaN loss with zero gradients; its
  LARS then applies only weight decay and momentum) and its recipe warms up 11 epochs.
  bank_init=random starts from a bank of random unit vectors (solo-learn's initial bank)
  and clusters it at step 0 too, so epoch 0 trains towards a partition of random
  vectors; not a recipe: it lets the tiny tests run k-means at step 0.
State (bank, the epoch each row was written, assignments, centroids) is in buffers:
checkpoints carry it and a resumed run continues bit-identically.
"""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

from ..data.order import mix_seed
from ..distributed import gather, gather_with_grad
from ..errors import UserError
from ..losses import deepclusterv2_loss, spherical_kmeans
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register, require

ASSIGN = (0, 1)        # crops_for_assign: the two global crops fill the bank
BANK_INITS = ("forward", "random")
_SALT = 104729         # keeps k-means' draws apart from the data order's (same seed, epoch)


@dataclass
class DeepClusterV2Config(ProjectorConfig):
    num_prototypes: List[int] = declared("[1, inf)")       # K of each prototype set (one k-means each)
    bank_init: str = declared(choices=BANK_INITS)          # forward: epoch 0 fills the bank (authors)
    loss_crops: str = declared(choices=("all", "global"))  # every crop (authors), the 2 global (solo-learn)


@dataclass
class DeepClusterV2LossConfig(LossConfig):
    temperature: float = declared("(0, inf)")
    kmeans_iterations: int = declared("[0, inf)")


@register
class DeepClusterV2(Method):
    name = "deepclusterv2"
    loss_name = "deepclusterv2"
    Config = DeepClusterV2Config
    Loss = DeepClusterV2LossConfig
    views = (2, None)
    same_size_views = False
    min_batch = (2, " for the projector's BatchNorm")

    def __init__(self, backbone, projector, num_train: int, cfg_method, cfg_loss, seed: int):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        m = cfg_method
        dim, self.heads = m.proj_out_dim, len(m.num_prototypes)
        self.temperature, self.kmeans_iterations = cfg_loss.temperature, cfg_loss.kmeans_iterations
        self.loss_crops, self.seed = m.loss_crops, seed
        g = torch.Generator().manual_seed(mix_seed(seed, _SALT, -1))
        bank = torch.zeros(len(ASSIGN), num_train, dim)
        if m.bank_init == "random":
            bank = F.normalize(torch.randn(len(ASSIGN), num_train, dim, generator=g), dim=2)
        self.register_buffer("bank", bank)
        # the epoch each bank row was written in (-1: the initial bank)
        self.register_buffer("bank_epoch", torch.full((num_train,), -1, dtype=torch.long))
        # each image's cluster in each prototype set (-1: none, no target)
        self.register_buffer("assignments", torch.full((self.heads, num_train), -1, dtype=torch.long))
        # the prototypes' weights: random unit vectors until the first k-means sets them
        for h, k in enumerate(m.num_prototypes):
            self.register_buffer(f"centroids{h}", F.normalize(torch.randn(k, dim, generator=g), dim=1))

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "DeepClusterV2":
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, cfg.method)
        return cls(backbone, projector, num_train, cfg.method, cfg.loss, cfg.seed)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        m = cfg.method
        require(len(m.num_prototypes) >= 1, "method.num_prototypes", list(m.num_prototypes),
                "list at least one prototype set")
        require(m.bank_init == "random" or cfg.epochs >= 2, "epochs", cfg.epochs,
                "method.bank_init=forward spends epoch 0 filling the bank (nothing trains): "
                "use epochs >= 2")

    @classmethod
    def check_data(cls, cfg, source, world: int) -> None:
        super().check_data(cfg, source, world)
        # k-means at epoch e >= 1 clusters the images of epoch e-1 (drop_last)
        rows = len(source) // cfg.batch_size * cfg.batch_size
        ks = list(cfg.method.num_prototypes)
        require(max(ks) <= rows, "method.num_prototypes", ks,
                f"each must be <= the {rows} images an epoch's bank clusters")

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        steps = torch.arange(total_steps)
        epoch, first = steps // steps_per_epoch, steps % steps_per_epoch == 0
        filling = cfg.method.bank_init == "forward"
        return {"kmeans": (first & ((epoch >= 1) | (not filling))).double(),
                "bank_filling": ((epoch == 0) & filling).double()}

    def _centroids(self) -> List[torch.Tensor]:
        return [getattr(self, f"centroids{h}") for h in range(self.heads)]

    @torch.no_grad()
    def before_step(self, now) -> None:
        if now["kmeans"]:
            self.cluster(now.epoch)

    def after_backward(self, now) -> None:
        if now["bank_filling"]:            # the authors' gradient-free pass: no update
            for p in self.parameters():
                p.grad = None

    @torch.no_grad()
    def cluster(self, epoch: int) -> None:
        """k-means of the rows written during epoch - 1 (the initial bank at epoch 0):
        the centroids become the prototypes and the clusters the targets of this epoch."""
        rows = (self.bank_epoch == epoch - 1).nonzero().squeeze(1)     # one sync an epoch
        ks = [c.shape[0] for c in self._centroids()]
        if rows.numel() < max(ks):
            raise UserError(f"method.num_prototypes={ks} is not allowed: each must be <= the "
                            f"{rows.numel()} images in the bank at epoch {epoch}")
        g = torch.Generator().manual_seed(mix_seed(self.seed, _SALT, epoch))
        self.assignments.fill_(-1)
        for h, c in enumerate(self._centroids()):
            x = self.bank[h % len(ASSIGN)].index_select(0, rows)
            centroids, assign = spherical_kmeans(x, c.shape[0], self.kmeans_iterations, g)
            c.copy_(centroids)
            self.assignments[h, rows] = assign

    def forward(self, batch) -> dict:
        views = batch.views
        b, v = views[0].shape[0], len(views)
        h = self.encode(views)
        z = F.normalize(self.projector(h), dim=1)                  # [V*b, D] crop-major
        # the global batch [V, N, D] and its dataset indices: every rank computes the loss of
        # the whole batch and writes the same rows to its bank
        z_all = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous()).transpose(0, 1)
        index = gather(batch.index)
        crops = v if self.loss_crops == "all" else len(ASSIGN)
        scores = [z_all[:crops] @ c.T.to(z_all.dtype) for c in self._centroids()]
        targets = self.assignments[:, index]                       # [H, N]
        loss = deepclusterv2_loss(scores, targets, self.temperature)
        with torch.no_grad():
            self.bank[:, index] = z_all[:len(ASSIGN)].detach().to(self.bank.dtype)
            self.bank_epoch[index] = batch.now.epoch
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
                "assigned": (targets[0] >= 0).float().mean()}
