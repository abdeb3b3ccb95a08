"""SwAV (Caron et al., 2020): the codes of one crop (Sinkhorn-Knopp assignments to K
learnable prototypes) are predicted from every other crop; an optional queue of recent
embeddings balances the codes when the batch is small."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_with_grad
from ..losses import swav_loss
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register, require

ASSIGN = (0, 1)       # crops_for_assign: the two global crops


@dataclass
class SwAVConfig(ProjectorConfig):
    num_prototypes: int = declared("[1, inf)")             # K
    freeze_prototypes_epochs: float = declared("[0, inf)")  # prototypes get no update for this long
    queue_size: int = declared("[0, inf)")                 # embeddings kept per assignment crop (0: no queue)
    queue_start_epoch: int = declared("[0, inf)")          # the queue is filled from this epoch, used once full


@dataclass
class SwAVLossConfig(LossConfig):
    temperature: float = declared("(0, inf)")
    epsilon: float = declared("(0, inf)")                  # Sinkhorn's entropy regularisation
    sinkhorn_iterations: int = declared("[1, inf)")


@register
class SwAV(Method):
    name = "swav"
    loss_name = "swav"
    Config = SwAVConfig
    Loss = SwAVLossConfig
    views = (2, None)
    same_size_views = False

    def __init__(self, backbone, projector, num_prototypes: int, cfg_method, cfg_loss):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        dim = cfg_method.proj_out_dim
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)
        m, lc = cfg_method, cfg_loss
        self.loss_args = (lc.temperature, lc.epsilon, lc.sinkhorn_iterations)
        # the queue of earlier (global) batches' embeddings, per assignment crop, newest
        # first, and how many of its rows are filled: both saved, so resume continues it
        self.register_buffer("queue", torch.zeros(len(ASSIGN), m.queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._filled = None       # queue_filled on the host (read once: no sync per step)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "SwAV":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        return cls(backbone, projector, m.num_prototypes, m, cfg.loss)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        if cfg.method.queue_size:
            require(cfg.method.queue_size % cfg.batch_size == 0, "method.queue_size",
                    cfg.method.queue_size, f"must be a multiple of batch_size ({cfg.batch_size})")

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        steps = torch.arange(total_steps)
        m = cfg.method
        return {"prototypes_frozen": (steps < m.freeze_prototypes_epochs * steps_per_epoch).double(),
                "queue_on": (steps >= m.queue_start_epoch * steps_per_epoch).double()}

    @torch.no_grad()
    def before_step(self, now) -> None:
        # the prototypes are unit vectors at every step (no gradient), as SwAV's loop
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def after_backward(self, now) -> None:
        if now["prototypes_frozen"]:
            self.prototypes.weight.grad = None

    def forward(self, batch) -> dict:
        views = batch.views
        b, v = views[0].shape[0], len(views)
        h = self.encode(views)
        z = F.normalize(self.projector(h), dim=1)                 # [V*B, D] crop-major
        # the global batch, crop-major
        z_all = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous())
        z_all = z_all.transpose(0, 1).flatten(0, 1)               # [V*N, D]
        scores = self.prototypes(z_all)                           # [V*N, K]
        n = z_all.shape[0] // v
        queue_scores = None
        if self._filled is None:
            self._filled = int(self.queue_filled)
        using = self.queue.shape[1] > 0 and self._filled >= self.queue.shape[1]
        if using:
            with torch.no_grad():
                queue_scores = [self.prototypes(self.queue[i]) for i in range(len(ASSIGN))]
        loss = swav_loss(scores, v, ASSIGN, *self.loss_args, queue_scores=queue_scores)
        if self.queue.shape[1] and batch.now["queue_on"]:
            self._enqueue(z_all.detach(), n)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
                "queue_used": torch.tensor(float(using), device=h.device)}

    @torch.no_grad()
    def _enqueue(self, z_all: torch.Tensor, n: int) -> None:
        """Newest first: shift the queue by n rows and put this batch's global crops in front."""
        for i, crop in enumerate(ASSIGN):
            self.queue[i] = torch.cat([z_all[crop * n:(crop + 1) * n], self.queue[i, :-n]])
        self._filled = min(self._filled + n, self.queue.shape[1])
        self.queue_filled.fill_(self._filled)
