"""Cross-field checks of a composed config, before any data is read or any
model is built. Hydra's schema already checks keys and types; these are the
rules that involve values and several keys. Each failure is one UserError
line naming the key, the value and what is allowed.
"""
import os
import tempfile
from pathlib import Path

import torch

from .errors import UserError
from .methods import LOSS_OF, METHODS

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "optimizer.name": ("sgd", "lars", "adamw"),
    "optimizer.lr_scaling": ("none", "linear", "sqrt"),
    "scheduler.name": ("cosine", "constant"),
    "dataset.pipeline": ("device", "torchvision"),
    "dataset.placement": ("auto", "device", "host"),
    "augment.interpolation": ("bilinear", "bicubic"),
    "backbone.stem": ("auto", "cifar", "stl", "imagenet"),
    "method.name": METHODS,
}
# the stride of each stem x the 8x of the ResNet stages: the smallest image it takes
MIN_SIZE = {"cifar": 8, "stl": 16, "imagenet": 32}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value} is not allowed: {allowed}")


def unknown_key(full_key: str, known, fix_otherwise: str = "`--cfg job` prints every key") -> str:
    """`<full_key> is not a config key. Fix: use <the nearest known key>`."""
    import difflib
    parent, _, name = full_key.rpartition(".")
    close = difflib.get_close_matches(name, list(known), n=1)
    fix = f"use {parent + '.' if parent else ''}{close[0]}" if close else fix_otherwise
    return f"{full_key} is not a config key. Fix: {fix}"


def check_known_keys(cfg, prefix: str = "") -> None:
    """Every key must be one of the schema's. Struct mode already stops `loss.temprature=0.1`
    at composition, but Hydra's own hint for it, `+loss.temprature=0.1`, adds the key and
    the value would be silently ignored. Run for every entrypoint by cli.report_user_errors."""
    import dataclasses
    from omegaconf import DictConfig, OmegaConf
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    known = [f.name for f in dataclasses.fields(schema)]
    for key in cfg.keys():
        if key not in known:
            raise UserError(unknown_key(f"{prefix}{key}", known,
                                        f"use one of {prefix}{{{', '.join(known)}}}")
                            + " (without '+')")
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none():
            check_known_keys(node, f"{prefix}{key}.")


def validate_config(cfg) -> None:
    for key, allowed in CHOICES.items():
        v = _get(cfg, key)
        _require(v in allowed, key, v, "use one of " + ", ".join(allowed))
    m = cfg.method.name
    _require(cfg.loss.name == LOSS_OF[m], "loss", cfg.loss.name,
             f"method={m} trains with loss={LOSS_OF[m]}")
    contrastive = m != "supervised"
    _require(cfg.batch_size >= (2 if contrastive else 1), "batch_size", cfg.batch_size,
             "needs >= 2 for a contrastive loss" if contrastive else "needs >= 1")
    _require(cfg.epochs >= 1, "epochs", cfg.epochs, "needs >= 1")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", cfg.max_steps,
             "needs >= 1 or null")
    if contrastive:
        _require(cfg.loss.temperature > 0, "loss.temperature", cfg.loss.temperature, "needs > 0")
    _require(cfg.optimizer.lr >= 0, "optimizer.lr", cfg.optimizer.lr, "needs >= 0")
    _require(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay",
             cfg.optimizer.weight_decay, "needs >= 0")
    _require(0 < cfg.loss.gamma <= 1, "loss.gamma", cfg.loss.gamma, "needs 0 < gamma <= 1")
    if m == "moco":
        keys_per_step = cfg.batch_size * (2 if cfg.method.symmetric else 1)
        _require(cfg.method.queue_size >= keys_per_step, "moco_k (method.queue_size)",
                 cfg.method.queue_size, f"needs >= the keys enqueued per step ({keys_per_step})")
        _require(cfg.method.bn_splits >= 1, "method.bn_splits", cfg.method.bn_splits,
                 "needs >= 1 (1 = plain BatchNorm)")
        _require(0 <= cfg.method.momentum <= 1, "moco_m (method.momentum)", cfg.method.momentum,
                 "needs 0 <= m <= 1")
    _require(cfg.dataset.subset is None or cfg.dataset.subset >= 1, "dataset.subset",
             cfg.dataset.subset, "needs >= 1 or null")
    for key in ("crop_scale", "crop_ratio", "blur_sigma"):
        lo, hi = cfg.augment[key]
        _require(0 < lo <= hi, f"augment.{key}", list(cfg.augment[key]), "needs 0 < low <= high")
    from .models import resolve_stem
    stem = resolve_stem(cfg.backbone.stem, cfg.dataset.size)
    _require(cfg.dataset.size >= MIN_SIZE[stem], "dataset.size", cfg.dataset.size,
             f"the {stem} stem needs images of at least {MIN_SIZE[stem]}px")
    _require(cfg.backbone.width >= 1, "backbone.width", cfg.backbone.width, "needs >= 1")
    _require(cfg.log_every >= 1, "log_every", cfg.log_every, "needs >= 1")
    _require(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every,
             "needs >= 0 (0 = only last.pt)")
    _require(cfg.eval.knn_k >= 1, "eval.knn_k", cfg.eval.knn_k, "needs >= 1 neighbour")
    _require(cfg.eval.knn_temperature > 0, "eval.knn_temperature", cfg.eval.knn_temperature,
             "needs > 0")
    _require(cfg.eval.knn_every >= 0, "eval.knn_every", cfg.eval.knn_every,
             "needs >= 0 (0 = only at the end)")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda is not allowed: no CUDA device is visible. "
                        "Fix: device=auto or device=cpu")
    if cfg.precision == "fp16" and not (cfg.device != "cpu" and torch.cuda.is_available()):
        raise UserError("precision=fp16 is not allowed on CPU. Fix: precision=bf16 or fp32")


def validate_data(cfg, source, world: int) -> None:
    """Rules that need the loaded training split."""
    n = len(source)
    _require(cfg.batch_size % world == 0, "batch_size", cfg.batch_size,
             f"must divide evenly over the {world} processes")
    _require(n >= cfg.batch_size, "batch_size", cfg.batch_size,
             f"the training split has only {n} images (use a smaller batch or a larger subset)")
    if cfg.method.name == "moco":
        per_process = cfg.batch_size // world
        _require(per_process % cfg.method.bn_splits == 0, "method.bn_splits",
                 cfg.method.bn_splits, f"must divide the batch of each process ({per_process}); "
                 f"use a divisor of it, or 1 for plain BatchNorm")
    if cfg.method.name in ("supcon", "supervised"):
        _require(bool((source.labels >= 0).all()), "method", cfg.method.name,
                 f"needs labels on every training image, and {cfg.dataset.name} split "
                 f"'{cfg.dataset.train_split}' has unlabeled ones (use a labelled split)")


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"output directory {folder} is not writable ({e.strerror or e}). "
                        f"Fix: hydra.run.dir=<a writable folder>") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output directory {folder} is not writable. "
                        f"Fix: hydra.run.dir=<a writable folder>")


def check_disk_space(run_dir: Path, checkpoint_bytes: int) -> None:
    """Refuse to start a run whose checkpoints cannot be written: while one is saved,
    three exist for a moment (prev.pt, last.pt and the new file), so a full disk would
    otherwise surface only at the end of the first epoch, maybe hours in."""
    import shutil
    folder = Path(run_dir) / "checkpoints"
    existing = sum(p.stat().st_size for p in (folder / "last.pt", folder / "prev.pt") if p.exists())
    free = shutil.disk_usage(run_dir).free + existing
    need = 3 * checkpoint_bytes
    if free < need:
        raise UserError(f"not enough disk space for checkpoints in {run_dir}: {free / 1e6:.1f} MB "
                        f"free, {need / 1e6:.1f} MB needed (three copies of {checkpoint_bytes / 1e6:.1f}"
                        f" MB while saving). Fix: free some space, or hydra.run.dir=<a larger disk>")
