"""The checks of a composed config before any data is read or any model is built.
Hydra's schema checks keys and types; `sslcifar.ranges.check_ranges` every value against
the range or choices its schema declares; this module the rules that involve several
keys, the method (`Method.check_config`) or the machine. Each failure is one UserError
line naming the key, the value and what is allowed.
"""
import os
import tempfile
from pathlib import Path

import torch

from .data.views import view_sizes, view_specs
from .errors import UserError
from .methods import METHODS
from .paths import config_dir
from .ranges import check_ranges

# the stride of each stem x the 8x of the ResNet stages: the smallest image it takes
MIN_SIZE = {"cifar": 8, "stl": 16, "imagenet": 32}


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value} is not allowed: {allowed}")


def validate_config(cfg) -> None:
    """Every rule that needs no data: the declared ranges, the rules across keys here, the
    method's own through its class (`check_config`)."""
    check_ranges(cfg)
    _require(cfg.method.name in METHODS, "method.name", cfg.method.name,
             "use one of " + ", ".join(sorted(METHODS)))
    method = METHODS[cfg.method.name]
    _require(cfg.loss.name == method.loss_name, "loss", cfg.loss.name,
             f"method={method.name} trains with loss={method.loss_name}")
    lo, why = method.min_batch
    _require(cfg.batch_size >= lo, "batch_size", cfg.batch_size, f"needs >= {lo}{why}")
    from .data.folders import FOLDER_DATASETS
    for streamed in ("stream", "dali"):
        _require(cfg.dataset.pipeline != streamed or cfg.dataset.name in FOLDER_DATASETS,
                 "dataset.pipeline", streamed, f"streams image folders ({', '.join(FOLDER_DATASETS)}); "
                 f"{cfg.dataset.name} is read into memory: use auto or device")
    if cfg.dataset.pipeline == "dali":
        from .data.dali import import_dali
        import_dali()
    protocols = sorted(p.stem for p in (config_dir() / "protocol").glob("*.yaml"))
    _require(cfg.eval.linear is None or cfg.eval.linear in protocols, "eval.linear",
             cfg.eval.linear, "use one of " + ", ".join(protocols) + " or null")
    if cfg.dataset.name == "spirograph":
        _require(cfg.dataset.subset_mode == "first", "dataset.subset_mode",
                 cfg.dataset.subset_mode, "Spirograph has no classes: use first")
        _require(cfg.augment.small_crops == 0, "augment.small_crops", cfg.augment.small_crops,
                 "Spirograph renders every view at 32 px (use 0)")
        _require(all(g.size is None for g in cfg.augment.groups), "augment.groups.N.size",
                 [g.size for g in cfg.augment.groups], "Spirograph renders every view at 32 px "
                 "(leave the group sizes null)")
        sizes = [32] * sum(g.count for g in cfg.augment.groups)
    else:
        specs = view_specs(cfg.augment, cfg.dataset)
        sizes = view_sizes(specs)
        _require(cfg.dataset.pipeline != "torchvision" or all(s.jitter_mode == "torchvision" for s in specs),
                 "augment.jitter_mode", "invclr", "pipeline=torchvision has torchvision's jitter "
                 "only: use dataset.pipeline=device")
    from .models import resolve_stem
    stem = resolve_stem(cfg.backbone.stem, cfg.dataset.size)
    for key, size in [("dataset.size", cfg.dataset.size)] + [("view size", s) for s in sizes]:
        _require(size >= MIN_SIZE[stem], key, size,
                 f"the {stem} stem needs images of at least {MIN_SIZE[stem]}px")
    _check_backbone(cfg.backbone, cfg.dataset.size, sizes)
    _require(not (method.needs_replay and cfg.dataset.pipeline == "torchvision"), "dataset.pipeline",
             "torchvision", f"method={method.name} re-makes views from their parameters, which "
             f"torchvision's pipeline cannot: use auto, device or stream")
    method.check_config(cfg, sizes)
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("wandb=true needs the wandb package, which is not installed. Fix: "
                            "pip install -e '.[wandb]' (or wandb=false)") from None
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda is not allowed: no CUDA device is visible. "
                        "Fix: device=auto or device=cpu")
    if cfg.precision == "fp16" and not (cfg.device != "cpu" and torch.cuda.is_available()):
        raise UserError("precision=fp16 is not allowed on CPU. Fix: precision=bf16 or fp32")


def schedule_warnings(cfg) -> list:
    """Lines to log about a schedule that does not fit the run: a warm-up of half the run or
    more (a recipe's 10 warm-up epochs with epochs=10) ends the run at the peak lr."""
    s, epochs = cfg.scheduler, cfg.epochs
    if s.warmup_epochs >= epochs / 2:
        return [f"scheduler.warmup_epochs={s.warmup_epochs:g} is half the run or more "
                f"(epochs={epochs}): the learning rate ends at or near its peak and never decays. "
                f"Fix: shorten the warm-up with the run, e.g. scheduler.warmup_epochs="
                f"{max(epochs / 100, 0.1):g} (the recipes' 10 of 1000 epochs), or 0"]
    return []


def validate_data(cfg, source, world: int) -> None:
    """Rules that need the loaded training split (the method's own: `check_data`)."""
    n = len(source)
    _require(cfg.batch_size % world == 0, "batch_size", cfg.batch_size,
             f"must divide evenly over the {world} processes")
    _require(n >= cfg.batch_size, "batch_size", cfg.batch_size,
             f"the training split has only {n} images (use a smaller batch or a larger subset)")
    METHODS[cfg.method.name].check_data(cfg, source, world)


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


def _check_backbone(b, image_size: int, sizes) -> None:
    """A timm backbone needs timm installed; a ViT or Swin cuts each view into whole
    patches; Swin's windows fix one view size."""
    from .timm_backbones import FAMILIES, default_patch_size, import_timm
    family = FAMILIES.get(b.name)
    if family is not None:
        import_timm()
    if family not in ("vit", "swin"):
        return
    patch = b.patch_size or default_patch_size(family, image_size)
    bad = sorted({s for s in sizes if s % patch})
    _require(not bad, "backbone.patch_size", patch, f"views of {bad} px are not whole numbers of "
             f"{patch}-pixel patches (backbone={b.name}): choose a patch size that divides "
             f"every view size")
    _require(family != "swin" or len(set(sizes)) == 1, "backbone", b.name,
             f"Swin's windows are fixed to one image size, the views have {sorted(set(sizes))} px "
             f"(use a ViT or ConvNeXt for multi-crop, or augment.small_crops=0)")
