"""What every method shares: its config schema, the hooks the training loop calls,
and a registry from names to classes.

A method is one `nn.Module` subclass of `Method` in one file of this package:

    @register
    class SimCLR(Method):
        name = "simclr"                 # method=simclr, conf/method/simclr.yaml
        loss_name = "nt_xent"           # the loss it trains with, conf/loss/nt_xent.yaml
        Config = SimCLRConfig           # the schema of cfg.method (a dataclass)
        Loss = NTXentConfig             # the schema of cfg.loss

        @classmethod
        def from_config(cls, cfg, num_train, num_classes): ...
        def forward(self, batch) -> dict: ...   # {"loss": scalar, "features": [B, F], ...}

The loop owns time. Before the first step it asks the method for its per-step arrays,
`schedules(cfg, total_steps, steps_per_epoch) -> {name: [total_steps] tensor}` (an EMA
momentum under the name "momentum", a teacher temperature, a frozen layer's flag), and
hands it each step's values as a `sslcifar.schedule.Now` (`now.step`, `now.epoch`,
`now["teacher_temp"]`): to the hooks, and to `forward` as `batch.now`. Per optimizer step:
    before_step(now)        before the forward (SwAV: prototypes back to unit length)
    forward(batch)          the loss (under autocast)
    after_backward(now)     gradient clipping, frozen layers (gradients unscaled)
and the loop's one EMA update of the pairs in `momentum_pairs()` with now["momentum"],
before the forward or after the optimizer step (`ema_timing`). Once, `param_groups()` for
the optimizer. State that training changes besides the weights (EMA encoders, queues,
centres) lives in buffers and sub-modules, so checkpoints and exact resume cover it.
Config rules that involve the method are its own `check_config` / `check_data`.
"""
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from ..errors import UserError
from ..models import backbone_from_config, has_feature_map, projection_mlp
from ..ranges import declared
from ..schedule import Now

METHODS: Dict[str, Type["Method"]] = {}


def register(cls: Type["Method"]) -> Type["Method"]:
    """Class decorator: make `method=<cls.name>` build this class."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def require(ok: bool, key: str, value, allowed: str) -> None:
    """One line naming the key, its value and what is allowed (as sslcifar.validate)."""
    if not ok:
        raise UserError(f"{key}={value} is not allowed: {allowed}")


# ---------------------------------------------------------------------- schemas

# Types only: the values live in conf/method/<name>.yaml and conf/loss/<name>.yaml.

@dataclass
class MethodConfig:
    name: str = MISSING


@dataclass
class ProjectorConfig(MethodConfig):
    """A projection MLP after the backbone (`sslcifar.models.projection_mlp`)."""
    proj_hidden_dim: Optional[int] = declared("[1, inf)")  # hidden width; null = the backbone's feature size
    proj_out_dim: int = declared("[1, inf)")               # output (embedding) size
    proj_layers: int = declared("[1, inf)")                # linear layers
    proj_bn: bool = MISSING                   # BatchNorm after each hidden linear layer
    proj_last_bn: bool = MISSING              # BatchNorm (no affine) after the last linear


@dataclass
class LossConfig:
    name: str = MISSING


@dataclass
class TemperatureConfig(LossConfig):
    temperature: float = declared("(0, inf)")


# ---------------------------------------------------------------------- the base class

def _same_size_runs(views: List[torch.Tensor]) -> List[Tuple[torch.Tensor, int]]:
    """Consecutive views of one size concatenated: [(batch of the run, number of views)]."""
    runs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        runs.append((views[start] if end == start + 1 else torch.cat(views[start:end]),
                     end - start))
        start = end
    return runs


class Method(nn.Module):
    name: ClassVar[str]
    loss_name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    Loss: ClassVar[type] = LossConfig
    needs_labels: ClassVar[bool] = False      # every training image must have a label
    views: ClassVar[tuple] = (2, 2)           # (fewest, most) views per image; None = any
    same_size_views: ClassVar[bool] = True    # all views at one size (no multi-crop)
    needs_replay: ClassVar[bool] = False      # re-makes views from their parameters (batch.replay)
    needs_feature_map: ClassVar[bool] = False  # reads backbone.feature_map as [B, C, h, w] (dense methods)
    min_batch: ClassVar[tuple] = (2, " for a contrastive loss")   # smallest batch, and why
    # its published CIFAR-10 recipe (conf/experiment/<preset>.yaml), for bench/methods.py and
    # the README; null: <name>_cifar10 where that file exists, else the method's own defaults
    preset: ClassVar[Optional[str]] = None
    # when the loop updates the targets of momentum_pairs(): before the forward (the keys of
    # this step come from the updated encoder: MoCo) or after the optimizer step (BYOL, DINO)
    ema_timing: ClassVar[str] = "after_step"

    backbone: nn.Module                       # the encoder that evaluation keeps

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "Method":
        raise NotImplementedError

    # ------------------------------------------------------------------ config checks
    @classmethod
    def check_config(cls, cfg, view_sizes: List[int]) -> None:
        """Rules of this method, before any data is read. view_sizes: one entry per view."""
        lo, hi = cls.views
        n = len(view_sizes)
        if n < lo or (hi is not None and n > hi):
            allowed = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None
                                                        else f"{lo} to {hi}")
            raise UserError(f"augment.groups gives {n} view(s) per image, but method={cls.name} "
                            f"takes {allowed}. Fix: set the view groups' counts "
                            f"(augment.groups.0.count=N, augment.small_crops=0)")
        require(not cls.needs_feature_map or has_feature_map(cfg.backbone.name), "backbone",
                cfg.backbone.name, f"method={cls.name} works on a convolutional feature map "
                f"[B, C, h, w]: a ResNet, WideResNet or convnext_tiny")
        if cls.same_size_views and len(set(view_sizes)) > 1:
            raise UserError(f"method={cls.name} takes views of one size, the view groups give "
                            f"{sorted(set(view_sizes))} px. Fix: augment.small_crops=0 and no "
                            f"group 'size'")

    @classmethod
    def check_data(cls, cfg, source, world: int) -> None:
        """Rules that need the loaded training split."""
        if cls.needs_labels:
            require(bool((source.labels >= 0).all()), "method", cls.name,
                    f"needs labels on every training image, and {cfg.dataset.name} split "
                    f"'{cfg.dataset.train_split}' has unlabeled ones (use a labelled split)")

    # ------------------------------------------------------------------ building blocks
    @staticmethod
    def make_backbone(cfg) -> nn.Module:
        return backbone_from_config(cfg.backbone, cfg.dataset.size)

    @staticmethod
    def make_projector(in_dim: int, m) -> nn.Sequential:
        """The projection MLP described by a ProjectorConfig."""
        return projection_mlp(in_dim, m.proj_hidden_dim, m.proj_out_dim, m.proj_layers,
                              m.proj_bn, m.proj_last_bn)

    def encode(self, views: List[torch.Tensor], backbone: Optional[nn.Module] = None
               ) -> torch.Tensor:
        """Backbone features [sum of batch sizes, F] of every view, in view order, with one
        backbone pass per run of consecutive views of the same size (DINO's multi-crop
        wrapper): BatchNorm statistics over all the views of a size at once."""
        backbone = self.backbone if backbone is None else backbone
        out = [backbone(x) for x, _ in _same_size_runs(views)]
        return out[0] if len(out) == 1 else torch.cat(out)

    def encode_maps(self, views: List[torch.Tensor]) -> List[torch.Tensor]:
        """Each view's last feature map [b, C, h_v, w_v] (`ResNet.feature_map`), batched as
        `encode` batches: one backbone pass per run of views of the same size."""
        out = []
        for x, count in _same_size_runs(views):
            out.extend(self.backbone.feature_map(x).chunk(count))
        return out

    # ------------------------------------------------------------------ hooks of the loop
    def param_groups(self) -> List[dict]:
        """Optimizer parameter groups. Keys besides `params` that the loop reads:
        `fixed_lr` (True: the base lr at every step, no schedule; SimSiam's predictor),
        `base_lr` (this group's own base lr, unscaled by the batch: the run's schedule scaled
        to it; All4One's transformer),
        `weight_decay` (a value for this group instead of optimizer.weight_decay).
        Default: every trainable parameter in one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @classmethod
    def schedules(cls, cfg, total_steps: int, steps_per_epoch: int) -> Dict[str, torch.Tensor]:
        """This method's per-step arrays, each [total_steps] (sslcifar.schedule builds them);
        "momentum" is the EMA momentum of momentum_pairs(). Default: none."""
        return {}

    def momentum_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        """(online, target) modules: the loop moves each target towards its online module
        by the EMA (sslcifar.methods.ema.update_targets). Default: none."""
        return []

    def before_step(self, now: Now) -> None:
        """Called before each forward with the step about to be taken."""

    def after_backward(self, now: Now) -> None:
        """Called after backward, before the optimizer step (gradients are unscaled)."""

    def collapse_std(self, z: torch.Tensor) -> torch.Tensor:
        """The SimSiam paper's collapse monitor (Chen & He, 2021, sec. 4.1): the standard
        deviation over the batch of the L2-normalised outputs, averaged over channels.
        About 1/sqrt(D) for well-spread outputs, 0 for a collapsed network. z: [B, D].
        D is kept as `self.z_dim` (the loop logs it beside z_std, the curves draw 1/sqrt(D))."""
        self.z_dim = z.shape[1]
        return F.normalize(z.detach().float(), dim=1).std(0).mean()

    def forward(self, batch) -> dict:
        raise NotImplementedError
