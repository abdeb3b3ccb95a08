"""Pretrained encoders for evaluation: from our runs, or from the original repos' files.

`load_encoder(cfg)` turns `cfg.pretrained` into a frozen ResNet encoder:

- a checkpoint file or a run directory (its `checkpoints/last.pt`);
- `random`: a seeded, untrained encoder of the composed `backbone` (the baseline);
- null: the newest pretraining run under `outputs/` (and `outputs/multirun/**`)
  whose backbone name and width match the composed `backbone`.

Files are read with `sslcifar.checkpoint.load` (weights_only=True: tensors and
plain data only; argparse.Namespace, which SupContrast saves as `opt`, is the
one extra class allowed). Besides ours, these layouts load:

    ours           {"model": {"backbone.conv1.weight", ...}, "config": {...}}
    MoCo v2        {"state_dict": {"module.encoder_q.conv1.weight", "module.encoder_k.*",
                                   "module.queue", "module.encoder_q.fc.0.weight", ...}}
    SogCLR         {"state_dict": {"module.base_encoder.conv1.weight", ...}}
    SupContrast    {"model": {"encoder.conv1.weight" | "encoder.module.conv1.weight",
                              "encoder.layer2.0.shortcut.0.weight", "head.0.weight", ...}}
    SimCLR-CIFAR10 {"enc.conv1.weight", ..., "projector.0.weight"}
    solo-learn     Lightning: {"state_dict": {"backbone.conv1.weight", "momentum_backbone.*",
                              "projector.*", "classifier.*", ...}, "epoch", "global_step", ...}
    lightly        Lightning: {"state_dict": {"backbone.0.weight", "backbone.2.0.conv1.weight",
                              ..., "projection_head.*"}}: an nn.Sequential of a ResNet's children
    torchvision    {"conv1.weight", ..., "fc.weight"}

Keys are mapped by three small rule lists (`STRIP`, `DROP`, `RENAME`): leading
wrapper prefixes are stripped one after another, keys of the parts that are not
the query encoder (key/momentum encoders, heads, queues) are dropped, and
SupContrast's `shortcut` becomes torchvision's `downsample`. An encoder stored as an
nn.Sequential of a ResNet's children (lightly) has its numbered keys renamed to the
children's names. The architecture
of a foreign file is read from its keys: width from conv1's output channels,
stem from conv1's kernel (7 = ImageNet stem, 3 = CIFAR/STL stem), depth from
the number of blocks per stage. Anything that still does not fit is a
UserError listing the missing and unexpected keys.
"""
import argparse
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import checkpoint as ckpt
from .errors import UserError
from .models import backbone_from_config, build_backbone, resolve_stem

log = logging.getLogger("sslcifar")

# Leading wrappers around the query encoder, stripped one after another
# (`encoder.module.conv1` -> `module.conv1` -> `conv1`).
STRIP = ("module.", "encoder_q.", "base_encoder.", "encoder.", "backbone.", "enc.", "model.")
# Parts that are not the encoder we evaluate: dropped wherever they appear in the prefix chain.
DROP = ("encoder_k.", "momentum_encoder.", "backbone_k.", "projector.", "predictor.", "head.",
        "fc.", "queue",
        # ours (BYOL's target, MoCo v3's momentum encoder) and solo-learn's / lightly's heads
        "backbone_t.", "projector_t.", "projector_k.", "criterion.",
        "momentum_backbone.", "momentum_projector.", "momentum_head.", "momentum_classifier.",
        "classifier.", "prototypes.", "dino_loss_func.", "backbone_momentum.",
        "projection_head", "prediction_head", "teacher_", "online_classifier.")
# (pattern, replacement) applied once the prefixes are gone
RENAME = ((re.compile(r"\.shortcut\."), ".downsample."),)

_ARCH = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
         ((3, 4, 6, 3), True): "resnet50"}


@dataclass
class Pretrained:
    backbone: nn.Module              # on the CPU, eval mode, requires_grad False
    path: Optional[Path]             # the checkpoint file (None for `random`)
    format: str                      # sslcifar | moco | sogclr | supcontrast | simclr-cifar10 |
                                     # torchvision | random
    name: str                        # resnet18 | resnet34 | resnet50
    width: int
    stem: str                        # cifar | stl | imagenet
    config: Optional[dict] = None    # the pretraining config (our checkpoints only)

    @property
    def describe(self) -> str:
        src = "random init" if self.path is None else str(self.path)
        stem = f" {self.stem} stem" if self.name in _ARCH.values() else ""
        return f"{self.name} width {self.width}{stem}, {self.format}: {src}"


# ---------------------------------------------------------------------- entry point

def load_encoder(cfg, outputs: Optional[Path] = None) -> Pretrained:
    """The encoder an evaluation config asks for (cfg.pretrained, cfg.backbone,
    cfg.dataset.size, cfg.seed). `outputs` defaults to <launch dir>/outputs."""
    b = cfg.backbone
    spec = cfg.pretrained
    if spec == "random":
        torch.manual_seed(cfg.seed)
        stem = resolve_stem(b.stem, cfg.dataset.size)
        net = backbone_from_config(b, cfg.dataset.size)
        return _freeze(Pretrained(net, None, "random", b.name, b.width, stem))
    if spec is None:
        outputs = outputs if outputs is not None else launch_dir() / "outputs"
        path = find_latest_run(outputs, b.name, b.width)
    else:
        path = resolve_checkpoint(_absolute(spec))
    return load_checkpoint(path, b.name, b.stem, cfg.dataset.size)


def launch_dir() -> Path:
    """Where the user ran the command (Hydra may have changed the working directory)."""
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        from hydra.utils import get_original_cwd
        return Path(get_original_cwd())
    return Path.cwd()


def _absolute(spec: str) -> Path:
    p = Path(spec).expanduser()
    return p if p.is_absolute() else launch_dir() / p


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or a run directory's checkpoints/last.pt."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / ckpt.LAST, path / ckpt.LAST):
            if candidate.is_file():
                return candidate
        raise UserError(f"pretrained={path} is a directory without checkpoints/{ckpt.LAST}. "
                        f"Fix: pretrained=<a run directory of simclr.py/moco.py> or a checkpoint file")
    if not path.exists():
        raise UserError(f"pretrained={path} does not exist. Fix: pretrained=<checkpoint file or "
                        f"run directory>, or leave it out to use the newest run under outputs/")
    return path


# ---------------------------------------------------------------------- finding our runs

def _run_backbone(run_dir: Path) -> Optional[Tuple[str, int]]:
    """(name, width) of a run's backbone: from .hydra/config.yaml, else from the checkpoint."""
    cfg_file = run_dir / ".hydra" / "config.yaml"
    try:
        if cfg_file.exists():
            from omegaconf import OmegaConf
            c = OmegaConf.load(cfg_file)
            return str(c.backbone.name), int(c.backbone.width)
        c = ckpt.load(run_dir / "checkpoints" / ckpt.LAST)["config"]
        return str(c["backbone"]["name"]), int(c["backbone"]["width"])
    except Exception as e:          # an unreadable run is skipped, not fatal
        log.debug("skipping %s: %s", run_dir, e)
        return None


def pretraining_runs(outputs: Path) -> List[Path]:
    """checkpoints/last.pt of every run under `outputs`, newest (last written) first."""
    outputs = Path(outputs)
    found = set(outputs.glob(f"*/*/checkpoints/{ckpt.LAST}"))
    found |= set(outputs.glob(f"multirun/**/checkpoints/{ckpt.LAST}"))
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)), reverse=True)


def find_latest_run(outputs: Path, name: str, width: int) -> Path:
    """The newest run's checkpoint whose backbone is `name` with `width`; logs which one."""
    runs = pretraining_runs(outputs)
    others = []
    for last in runs:
        run_dir = last.parent.parent
        arch = _run_backbone(run_dir)
        if arch == (name, width):
            finished = (run_dir / "done.json").exists()
            log.info("pretrained=null: using the newest %s (width %d) run %s%s", name, width,
                     run_dir, "" if finished else " (not finished: its last checkpoint)")
            return last
        if arch is not None:
            others.append(f"{run_dir.relative_to(outputs)} ({arch[0]} width {arch[1]})")
    seen = f"; it holds {len(others)} run(s) of other backbones: {', '.join(others[:3])}" \
        if others else ""
    raise UserError(
        f"no pretraining run with backbone {name} (width {width}) found under {outputs.resolve()} "
        f"(searched */*/checkpoints/{ckpt.LAST} and multirun/**/checkpoints/{ckpt.LAST}{seen}). "
        f"Fix: pretrained=PATH (a checkpoint file or run directory), set backbone/backbone.width "
        f"to a run's, or pretrain first: python simclr.py backbone={name}")


# ---------------------------------------------------------------------- reading a checkpoint

def load_checkpoint(path: Path, name: str = "resnet18", stem: str = "auto",
                    image_size: int = 32) -> Pretrained:
    """Build and fill an encoder from a checkpoint file of any supported layout.

    `name` and `stem` (the composed backbone) are only fall-backs: our checkpoints
    carry their config and foreign ones are read from their keys."""
    path = Path(path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = ckpt.load(path)
    stem_relu = True
    config = state.get("config") if isinstance(state.get("config"), dict) else None
    if config is not None and isinstance(state.get("model"), dict):
        sd, fmt = _ours(state["model"]), "sslcifar"
        b = config["backbone"]
        name, width = b["name"], int(b["width"])
        trained_size = int(config.get("dataset", {}).get("size", image_size))
        stem = resolve_stem(b["stem"], trained_size)
        if name not in _ARCH.values():      # built as trained (a ViT's position embeddings)
            net = backbone_from_config(b, trained_size)
            load_backbone_weights(net, sd, path, f"a {name} (width {width})")
            log.info("loaded %s encoder %s (width %d) from %s", fmt, name, width, path)
            return _freeze(Pretrained(net, path, fmt, name, width, stem, config))
    else:
        raw = _state_dict_of(state, path)
        fmt = _format_of(raw)
        sd = encoder_state_dict(raw)
        if "pos_embed" in sd and "patch_embed.proj.weight" in sd:
            return _load_vit(sd, path, _vit_format(raw))
        layout = _sequential_layout(sd)
        if layout is not None:
            sd = _renumbered(sd, layout)
            stem_relu = layout != "lightly"
        name, width, stem = infer_architecture(sd, path, name, stem, image_size)
    net = build_backbone(name, width, stem, image_size)
    if not stem_relu:           # evaluated as it was trained: no ReLU after the stem's BN
        net.relu = nn.Identity()
    load_backbone_weights(net, sd, path, f"a {name} (width {width}, {stem} stem)")
    log.info("loaded %s encoder %s (width %d, %s stem) from %s", fmt, name, width, stem, path)
    return _freeze(Pretrained(net, path, fmt, name, width, stem, config))


def _ours(model: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    p = "backbone."
    return {k[len(p):]: v for k, v in model.items() if k.startswith(p)}


# ---------------------------------------------------------------------- ViTs

VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}          # ViT-Ti/S/B/L: 64 channels per head
VIT_NAMES = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}


def _vit_format(raw: Dict[str, torch.Tensor]) -> str:
    keys = list(raw)
    if any(k.startswith("momentum_backbone.") for k in keys):
        return "solo-learn"
    if any("base_encoder." in k for k in keys):
        return "mocov3"
    return "dino" if any(k.startswith("backbone.") for k in keys) or "cls_token" in raw \
        else "timm"


def _load_vit(sd: Dict[str, torch.Tensor], path: Path, fmt: str) -> "Pretrained":
    """A timm-layout ViT state dict (DINO's, MoCo v3's, solo-learn's, timm's: the same names
    once their prefixes are gone) into the timm ViT its shapes describe: width from the
    position embeddings, patch size from the patch projection, the training image size from
    the number of position embeddings, depth from the blocks, heads as ViT-Ti/S/B/L's 64
    channels each (the weights do not record them)."""
    pos, proj = sd["pos_embed"], sd["patch_embed.proj.weight"]
    width, patch = int(pos.shape[-1]), int(proj.shape[-1])
    prefix_tokens = int("cls_token" in sd) + (int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0)
    side = math.isqrt(int(pos.shape[1]) - prefix_tokens)
    depth = len({m.group(1) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    kwargs = dict(depth=depth, num_heads=VIT_HEADS.get(width, max(1, width // 64)),
                  mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width,
                  class_token="cls_token" in sd)
    if "reg_token" in sd:
        kwargs["reg_tokens"] = int(sd["reg_token"].shape[1])
    name = VIT_NAMES.get(width, "vit_base")
    net = build_backbone(name, width, "auto", side * patch, patch_size=patch,
                         timm_name="vit_base_patch16_224", kwargs=kwargs)
    load_backbone_weights(net, {f"model.{k}": v for k, v in sd.items()}, path,
                          f"a ViT (width {width}, patch {patch}, {depth} blocks)")
    log.info("loaded %s ViT encoder (width %d, patch %d, %d blocks, %d px) from %s", fmt, width,
             patch, depth, side * patch, path)
    return _freeze(Pretrained(net, path, fmt, name, width, "auto"))


def _state_dict_of(state: dict, path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a foreign checkpoint: its `state_dict`, its `model`, or itself."""
    for key in ("state_dict", "model", "teacher"):      # teacher: DINO's checkpoint.pth
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    sd = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not sd:
        raise UserError(f"checkpoint {path} holds no tensors (keys: {_few(list(state))}). Fix: "
                        f"give a state_dict or a checkpoint with a 'state_dict' or 'model' entry")
    return sd


# the children of a ResNet kept by an nn.Sequential, by position: torchvision's
# (conv1, bn1, relu, maxpool, layer1-4) and lightly's ResNetGenerator (conv1, bn1, layer1-4;
# its forward applies the stem's ReLU functionally, so such a Sequential has none)
SEQUENTIAL_CHILDREN = {
    "torchvision": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "lightly": ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"),
}


def _sequential_layout(sd: Dict[str, torch.Tensor]) -> Optional[str]:
    """'torchvision' / 'lightly' when the encoder's keys are numbered children, else None."""
    if not sd or not all(re.match(r"\d+\.", k) for k in sd):
        return None
    last = max(int(k.split(".")[0]) for k in sd)
    return "torchvision" if last == 7 else "lightly" if last == 5 else None


def _renumbered(sd: Dict[str, torch.Tensor], layout: str) -> Dict[str, torch.Tensor]:
    names = SEQUENTIAL_CHILDREN[layout]
    return {names[int(k.split(".")[0])] + k[k.index("."):]: v for k, v in sd.items()}


def _format_of(sd: Dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith(("momentum_backbone.", "classifier.")) for k in keys) and \
            any(k.startswith("backbone.") for k in keys):
        return "solo-learn"
    if any(re.match(r"backbone\.\d+\.", k) for k in keys):
        return "lightly"
    for marker, fmt in (("encoder_q.", "moco"), ("base_encoder.", "sogclr"),
                        ("encoder.", "supcontrast"), ("enc.", "simclr-cifar10")):
        if any(k.startswith(marker) or f".{marker}" in k for k in keys):
            return fmt
    return "torchvision"


def map_key(key: str) -> Optional[str]:
    """A foreign key as our backbone's key, or None when it is not part of the encoder."""
    while True:
        if key.startswith(DROP):
            return None
        prefix = next((p for p in STRIP if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix):]
    for pattern, repl in RENAME:
        key = pattern.sub(repl, key)
    return key


def encoder_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Apply `map_key` to every key; two keys landing on one name is an error."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = map_key(k)
        if new is None:
            continue
        if new in out:
            raise UserError(f"checkpoint keys collide after removing prefixes: two keys map to "
                            f"{new!r} (one is {k!r}); it holds two encoders we cannot tell apart")
        out[new] = v
    return out


def infer_architecture(sd: Dict[str, torch.Tensor], path: Path, name: str, stem: str,
                       image_size: int) -> Tuple[str, int, str]:
    """(name, width, stem) of a ResNet state dict without a config."""
    w = sd.get("conv1.weight")
    if w is None or w.dim() != 4:
        raise UserError(f"checkpoint {path} has no ResNet encoder: no conv1.weight after removing "
                        f"the prefixes {', '.join(STRIP)} (its keys: {_few(list(sd))}). Fix: "
                        f"give a checkpoint of a ResNet-18/34/50 encoder")
    width, kernel = int(w.shape[0]), int(w.shape[-1])
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in sd for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m}
        blocks.append(len(ids))
    bottleneck = "layer1.0.conv3.weight" in sd
    name = _ARCH.get((tuple(blocks), bottleneck), name)   # unknown: the strict load explains
    if kernel == 7:
        stem = "imagenet"
    else:
        stem = resolve_stem(stem, image_size)
        if stem == "imagenet":        # a 3x3 conv1 is never the ImageNet stem
            stem = "stl"
    return name, width, stem


def load_backbone_weights(net: nn.Module, sd: Dict[str, torch.Tensor], path: Path,
                          what: str = "the encoder") -> None:
    """Strict load; UserError listing missing, unexpected and mis-shaped keys."""
    expected = net.state_dict()
    # BatchNorm's step counter is not a weight: older files may lack it
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes {_few(shapes)}")
        raise UserError(f"checkpoint {path} does not fit {what}: {'; '.join(parts)}. Fix: "
                        f"choose the checkpoint's backbone (backbone=..., backbone.width=...), or "
                        f"a checkpoint whose encoder keys are a ResNet's after removing "
                        f"{', '.join(STRIP)}")
    full = dict(expected)
    full.update(sd)
    net.load_state_dict(full, strict=True)


def _few(items: List[str], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > n else ''}]"


def _freeze(p: Pretrained) -> Pretrained:
    p.backbone.eval()
    p.backbone.requires_grad_(False)
    return p
