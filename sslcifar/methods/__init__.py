"""Methods: each one small `Method` (an nn.Module) in one file of this package.

    forward(batch) -> {"loss": scalar, "features": [B, F] detached backbone features
                       of the first view (for the online probe), any other scalar: a metric}

`batch` is a `sslcifar.data.batch.Batch`: its views (any number, any sizes), dataset
indices, labels and each view's augmentation parameters. Each method exposes
`.backbone`, the encoder that evaluation keeps.

Every module of this package is imported here, so the `@register` decorator of each
method fills `METHODS`: adding a method is adding its file (README, "Adding a method").
"""
import importlib
import pkgutil
from typing import Type

from torch import nn

from .base import METHODS, Method, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from .moco import MoCo  # noqa: E402  (the names tests and benchmarks import)


def method_class(name: str) -> Type[Method]:
    if name not in METHODS:
        raise ValueError(f"method.name={name!r} is not one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(cfg, num_train: int, num_classes: int) -> nn.Module:
    """The method module described by cfg.method / cfg.backbone / cfg.loss."""
    return method_class(cfg.method.name).from_config(cfg, num_train, num_classes)


def register_schemas(cs) -> None:
    """Each method's `Config` as schema/method/<name> and its `Loss` as schema/loss/<loss>,
    which conf/method/<name>.yaml and conf/loss/<loss>.yaml list first."""
    losses = {}
    for name, cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=cls.Config)
        if losses.setdefault(cls.loss_name, cls.Loss) is not cls.Loss:
            raise ValueError(f"two schemas for loss {cls.loss_name!r}: methods that share a loss "
                             f"must share its config class")
        cs.store(group="schema/loss", name=cls.loss_name, node=cls.Loss)


__all__ = ["METHODS", "Method", "MoCo", "build_method", "method_class", "register",
           "register_schemas"]
