"""Typed schemas for the Hydra config tree: each key's type and allowed values.

Every group in `conf/` (backbone, optimizer, scheduler, dataset, augment, eval) is
validated against one dataclass here; `method` and `loss` against the schema of the
chosen method (`Config` and `Loss` of its class in `sslcifar/methods/`), which its YAML
file lists first. The primary configs (`conf/simclr.yaml`, `conf/moco.yaml`,
`conf/linear_eval.yaml`) list the matching schema first in their defaults list, so
Hydra merges every YAML file and every command-line override into a *typed,
struct-mode* config: a misspelt key or a value of the wrong type fails at composition
with Hydra's own message naming the key.

Where the defaults live: every value is in the YAML files of `conf/` (the recipes', and
the shared ones in `conf/common/`); a schema field holds its type and, through
`sslcifar.ranges.declared`, its allowed range or choices, which one generic check
(`check_ranges`) enforces before anything runs. Code never invents a default of its own:
it reads the config.
"""
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .ranges import declared

POSITIVE, NON_NEGATIVE, AT_LEAST_1, PROBABILITY = "(0, inf)", "[0, inf)", "[1, inf)", "[0, 1]"


@dataclass
class BackboneConfig:
    name: str = declared(choices=("resnet18", "resnet34", "resnet50", "wide_resnet28w2",
                                  "wide_resnet28w8", "vit_tiny", "vit_small", "vit_base",
                                  "swin_tiny", "convnext_tiny", "timm"))
    # channels of the first stage (64 = torchvision's ResNet, 16 = WideResNet's, ConvNeXt's
    # 96); a ViT's or Swin's embedding size
    width: int = declared(AT_LEAST_1)
    # cifar (3x3 s1, no max-pool) | stl (3x3 s1 + max-pool) | imagenet | auto (from the image size)
    stem: str = declared(choices=("auto", "cifar", "stl", "imagenet"))
    sync_bn: bool = MISSING                 # convert BatchNorm to SyncBatchNorm when distributed
    # timm backbones (sslcifar/timm_backbones.py): the timm model, the patch size (ViT,
    # Swin) or stem stride (ConvNeXt; null: from the image size), and create_model's kwargs
    timm_name: Optional[str] = MISSING
    patch_size: Optional[int] = declared(AT_LEAST_1)
    kwargs: Dict[str, Any] = MISSING


@dataclass
class OptimizerConfig:
    name: str = declared(choices=("sgd", "lars", "adam", "adamw"))
    lr: float = declared(NON_NEGATIVE)      # base learning rate, before lr_scaling
    # none | linear (x batch/256) | sqrt (x sqrt(batch))
    lr_scaling: str = declared(choices=("none", "linear", "sqrt"))
    weight_decay: float = declared(NON_NEGATIVE)
    momentum: float = declared(PROBABILITY)
    nesterov: bool = MISSING
    betas: List[float] = declared("[0, 1)", length=2)            # Adam, AdamW
    trust_coefficient: float = declared(POSITIVE)               # LARS eta
    lars_variant: str = declared(choices=("sogclr", "solo", "torchlars"))   # sslcifar/optim.py
    clip_lr: bool = MISSING                 # LARS solo: step min(eta * trust, lr) (solo-learn's clip_lr)
    # no weight decay on biases, norms, position embeddings and class tokens (the ViT
    # recipes; solo-learn's exclude_bias_n_norm_wd)
    exclude_bias_n_norm_wd: bool = MISSING


@dataclass
class SchedulerConfig:
    name: str = declared(choices=("cosine", "constant"))
    warmup_epochs: float = declared(NON_NEGATIVE)
    final_lr: float = declared(NON_NEGATIVE)          # absolute floor reached at the last step
    # warm-up from this lr (solo-learn: 3e-5) to the base lr at the last warm-up step; null: base/W
    warmup_start_lr: Optional[float] = declared(NON_NEGATIVE)
    # weight decay on the same cosine, from optimizer.weight_decay to this value (DINO:
    # 0.04 -> 0.4); null: constant. Groups with their own weight_decay keep it.
    final_weight_decay: Optional[float] = declared(NON_NEGATIVE)


@dataclass
class DatasetConfig:
    name: str = declared(choices=("cifar10", "cifar100", "stl10", "imagefolder", "imagenet",
                                  "imagenet100", "spirograph"))
    root: str = MISSING               # folder holding the data (relative: to the launch directory)
    download: bool = MISSING          # let torchvision download cifar/stl when missing
    subset: Optional[int] = declared(AT_LEAST_1)    # use only N training images:
    subset_mode: str = declared(choices=("first", "stratified"))   # the first N | N/classes per class
    size: int = declared(AT_LEAST_1)  # side of the square images fed to the network
    mean: List[float] = declared(length=3)
    std: List[float] = declared(POSITIVE, length=3)     # the images are divided by it
    num_classes: int = declared(NON_NEGATIVE)           # 0: from the labels
    # auto: device, or stream for a folder data set whose decoded copy would exceed
    # memory_budget_mb | device (decoded into memory, views made batched on the device) |
    # stream (files decoded per batch in DataLoader workers) | torchvision (per-image PIL)
    pipeline: str = declared(choices=("auto", "device", "stream", "dali", "torchvision"))
    memory_budget_mb: Optional[int] = declared(AT_LEAST_1)  # auto's budget; null: half the available memory
    decode: str = declared(choices=("cpu", "cuda"))   # stream: cpu (in the workers) | cuda (nvJPEG, batched)
    classes_file: Optional[str] = MISSING     # folder data sets: only these class folders (ImageNet-100)
    num_workers: int = declared(NON_NEGATIVE)       # DataLoader workers (torchvision and stream pipelines)
    small_size: Optional[int] = declared(AT_LEAST_1)   # side of multi-crop's small crops (CIFAR 24, STL-10 58)
    # pipeline=device: where the uint8 images live. auto: on the GPU if they take <= 1/4 of
    # its free memory, else host | device | host
    placement: str = declared(choices=("auto", "device", "host"))
    train_split: str = MISSING        # stl10: train+unlabeled for pretraining
    test_split: str = MISSING
    # spirograph only (generated, no download)
    num_train: int = declared(NON_NEGATIVE)
    num_test: int = declared(NON_NEGATIVE)


# The fields of one augmentation, with their types and ranges, declared once: the base
# augmentation (AugmentConfig) sets every one; a view group (ViewGroupConfig) may set any,
# null taking the base's value.
AUGMENT_FIELDS = [
    ("crop_scale", List[float], dict(interval="(0, 1]", pair=True)),   # RandomResizedCrop's area
    ("crop_ratio", List[float], dict(interval=POSITIVE, pair=True)),   # and aspect ratio
    ("interpolation", str, dict(choices=("bilinear", "bicubic"))),
    ("flip_p", float, dict(interval=PROBABILITY)),
    ("jitter_p", float, dict(interval=PROBABILITY)),
    ("brightness", float, dict(interval=NON_NEGATIVE)),
    ("contrast", float, dict(interval=NON_NEGATIVE)),
    ("saturation", float, dict(interval=NON_NEGATIVE)),
    ("hue", float, dict(interval="[0, 0.5]")),
    ("grayscale_p", float, dict(interval=PROBABILITY)),
    ("blur_p", float, dict(interval=PROBABILITY)),
    ("blur_kernel_size", int, dict(interval=AT_LEAST_1)),
    ("blur_sigma", List[float], dict(interval=POSITIVE, pair=True)),
    ("solarize_p", float, dict(interval=PROBABILITY)),
    ("solarize_threshold", float, dict(interval=PROBABILITY)),
    # torchvision (random order, exact HSV) | invclr (fixed order, YIQ hue)
    ("jitter_mode", str, dict(choices=("torchvision", "invclr"))),
]


def _augment_fields(inherit: bool):
    return [(name, Optional[t] if inherit else t, declared(**allowed, default=None if inherit else MISSING))
            for name, t, allowed in AUGMENT_FIELDS]


# One view group: `count` views of `size` px; a field left null takes the augment group's
# value (so asymmetric views and multi-crop are configuration). The nulls are this
# schema's meaning ("inherit"), not recipe values.
ViewGroupConfig = make_dataclass("ViewGroupConfig", [
    ("count", int, declared(AT_LEAST_1, default=1)),
    ("size", Optional[int], declared(AT_LEAST_1, default=None)),       # null: dataset.size
    *_augment_fields(inherit=True)])

# The base augmentation (every view group inherits it) and the view groups.
AugmentConfig = make_dataclass("AugmentConfig", [
    *_augment_fields(inherit=False),
    ("compile", bool, MISSING),        # make the views through torch.compile (falls back to eager)
    ("groups", List[ViewGroupConfig], MISSING),    # the views of each image, group by group
    # multi-crop shortcut: a group of small crops appended after `groups`
    ("small_crops", int, declared(NON_NEGATIVE)),
    ("small_size", Optional[int], declared(AT_LEAST_1)),          # null: dataset.small_size
    ("small_crop_scale", List[float], declared("(0, 1]", pair=True))])
for _cls in (ViewGroupConfig, AugmentConfig):     # named as if written with class statements
    _cls.__module__ = __name__


@dataclass
class EvalConfig:
    knn_every: int = declared(NON_NEGATIVE)   # epochs between kNN evaluations (and at the end); 0 = only at the end
    knn_k: int = declared(AT_LEAST_1)
    knn_temperature: float = declared(POSITIVE)
    knn_max_train: Optional[int] = declared(AT_LEAST_1)   # cap on the kNN memory bank (null = whole train split)
    online_probe: bool = MISSING      # linear classifier on detached features, trained alongside
    probe_lr: float = declared(POSITIVE)      # its Adam learning rate
    tsne: bool = MISSING              # t-SNE of test embeddings (tsne.png) at the end
    tsne_points: int = declared("[4, inf)")   # test images in the t-SNE (exact t-SNE: O(n^2))
    linear: Optional[str] = MISSING   # a linear-evaluation protocol (fast, supcontrast, ...: conf/
                                      # protocol/) run at the end; its top-1 in done.json and the last row


@dataclass
class TrainConfig:
    """Top-level keys shared by every pretraining entrypoint (values: conf/common/train.yaml
    and the primary configs)."""
    # typed by the method's own schema (its class's `Config`, `Loss`): conf/method/<name>.yaml
    # and conf/loss/<name>.yaml start with /schema/method/<name> and /schema/loss/<name>
    method: Any = MISSING
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    loss: Any = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    batch_size: int = declared(AT_LEAST_1)     # global batch (all ranks together)
    epochs: int = declared(AT_LEAST_1)
    max_steps: Optional[int] = declared(AT_LEAST_1)   # stop after this many optimizer steps (smoke runs)
    seed: int = MISSING
    device: str = declared(choices=("auto", "cpu", "cuda"))
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    precision: str = declared(choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = MISSING     # NHWC memory format (CUDA)
    compile: bool = MISSING           # torch.compile the method
    # default | reduce-overhead (CUDA graphs: fewer kernel launches) | max-autotune
    compile_mode: str = declared(choices=("default", "reduce-overhead", "max-autotune"))
    resume: bool = MISSING            # continue from <run dir>/checkpoints/last.pt
    checkpoint_every: int = declared(NON_NEGATIVE)   # also keep epoch_N.pt every N epochs (0 = only last.pt)
    log_every: int = declared(AT_LEAST_1)     # steps between tqdm postfix / TensorBoard scalars
    progress: bool = MISSING          # tqdm progress bars
    tensorboard: bool = MISSING
    wandb: bool = MISSING             # also log to Weights & Biases (pip install -e '.[wandb]');
                                      # WANDB_MODE=offline writes the run under <run dir>/wandb
    wandb_project: str = MISSING
    wandb_entity: Optional[str] = MISSING
    wandb_name: Optional[str] = MISSING   # null: the run directory's name
    run_dir: Optional[str] = MISSING      # null: Hydra's run directory


def register_configs() -> None:
    """The training schema, and each method's own schemas (`schema/method/<name>`,
    `schema/loss/<loss name>`) from the method registry."""
    from .methods import register_schemas
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    register_schemas(cs)


def as_dict(cfg: Any) -> dict:
    """Plain, resolved dict of a config (what checkpoints and logs store)."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True)


# MoCo's original command-line names (moco.py renames them before Hydra reads the command
# line, so they win over any preset)
MOCO_ALIASES = {"moco_k": "method.queue_size", "moco_t": "loss.temperature",
                "moco_m": "method.momentum"}
# Keys that moved: the fix names where they went.
MOVED = {"method.num_views": "augment.groups.0.count (views come from the augmentation's view "
                             "groups; e.g. augment.groups.0.count=3)",
         # SimCLR-CIFAR10's linear evaluation: which epoch's checkpoint to evaluate
         "load_epoch": "pretrained=RUN_DIR/checkpoints/epoch_N.pt (SimCLR-CIFAR10's load_epoch: "
                       "which checkpoint to evaluate; pretraining keeps epoch_N.pt every N epochs "
                       "with checkpoint_every=N)",
         **{k: f"{v} (under method=moco: moco.py, or simclr.py method=moco)"
            for k, v in MOCO_ALIASES.items()}}


def unknown_key(full_key: str, known, fix_otherwise: str = "`--cfg job` prints every key") -> str:
    """`<full_key> is not a config key. Fix: use <the nearest known key>`."""
    import difflib
    if full_key in MOVED:
        return f"{full_key} is not a config key. Fix: use {MOVED[full_key]}"
    parent, _, name = full_key.rpartition(".")
    owners = _methods_with(parent, name)
    if owners:          # a key of another method's schema: name the methods that have it
        return (f"{full_key} is not a key of the chosen method. Fix: {full_key} belongs to "
                f"{', '.join(f'method={m}' for m in owners)}: choose one of them "
                f"(python simclr.py method={owners[0]} {full_key}=...)")
    close = difflib.get_close_matches(name, list(known), n=1)
    fix = f"use {parent + '.' if parent else ''}{close[0]}" if close else fix_otherwise
    return f"{full_key} is not a config key. Fix: {fix}"


def _methods_with(group: str, key: str):
    """The registered methods whose `method` (group "method") or `loss` schema has `key`."""
    if group not in ("method", "loss"):
        return []
    import dataclasses
    from .methods import METHODS
    return sorted(name for name, cls in METHODS.items()
                  if key in {f.name for f in dataclasses.fields(cls.Config if group == "method" else cls.Loss)})


def check_known_keys(cfg, prefix: str = "") -> None:
    """Every key must be one of the schema's. Struct mode already stops `loss.temprature=0.1`
    at composition, but Hydra's own hint for it, `+loss.temprature=0.1`, adds the key and
    the value would be silently ignored. Run for every entrypoint by cli.report_user_errors."""
    import dataclasses
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from .errors import UserError
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
        elif isinstance(node, ListConfig) and not node._is_none():
            for i, item in enumerate(node):
                if isinstance(item, DictConfig):
                    check_known_keys(item, f"{prefix}{key}.{i}.")
