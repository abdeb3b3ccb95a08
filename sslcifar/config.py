"""Typed schemas for the Hydra config tree.

Every group in `conf/` (backbone, optimizer, scheduler, dataset, augment, eval) is
validated against one dataclass here; `method` and `loss` against the schema of the
chosen method (`Config` and `Loss` of its class in `sslcifar/methods/`), which its YAML
file lists first. The primary configs (`conf/simclr.yaml`, `conf/moco.yaml`,
`conf/linear_eval.yaml`) list the matching schema first in their defaults list, so
Hydra merges every YAML file and every command-line override into a *typed,
struct-mode* config: a misspelt key or a value of the wrong type fails at composition
with Hydra's own message naming the key.

Where the defaults live: the recipe values (batch 512, temperature 0.5, ...)
are in the YAML files of `conf/`. The dataclasses below carry the types and
only neutral values (a field that a recipe does not use keeps its neutral
value). Code never invents a default of its own: it reads the config.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class BackboneConfig:
    name: str = MISSING          # resnet18 | resnet34 | resnet50
    width: int = 64              # channels of the first stage; 64 = torchvision's ResNet
    stem: str = "auto"           # cifar (3x3 s1, no max-pool) | stl (3x3 s1 + max-pool) | imagenet | auto (from dataset)
    sync_bn: bool = False        # convert BatchNorm to SyncBatchNorm when distributed


@dataclass
class OptimizerConfig:
    name: str = MISSING               # sgd | lars | adamw
    lr: float = MISSING               # base learning rate, before lr_scaling
    lr_scaling: str = "none"          # none | linear (x batch/256) | sqrt (x sqrt(batch))
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    trust_coefficient: float = 0.001  # LARS eta
    lars_variant: str = "sogclr"      # LARS: sogclr | solo | torchlars (sslcifar/optim.py)
    clip_lr: bool = False             # LARS solo: step min(eta * trust, lr) (solo-learn's clip_lr)


@dataclass
class SchedulerConfig:
    name: str = MISSING               # cosine | constant
    warmup_epochs: float = 0.0
    final_lr: float = 0.0             # absolute floor reached at the last step
    warmup_start_lr: Optional[float] = None   # warm-up from this lr (solo-learn: 3e-5) to the
                                              # base lr at the last warm-up step; null: base/W
    # weight decay on the same cosine, from optimizer.weight_decay to this value (DINO:
    # 0.04 -> 0.4); null: constant. Groups with their own weight_decay keep it.
    final_weight_decay: Optional[float] = None


@dataclass
class DatasetConfig:
    name: str = MISSING               # cifar10 | cifar100 | stl10 | imagefolder | spirograph
    root: str = "${oc.env:SSLCIFAR_DATA,data}"   # folder holding the data ($SSLCIFAR_DATA, else
                                                 # ./data, relative to the launch directory)
    download: bool = False            # let torchvision download cifar/stl when missing
    subset: Optional[int] = None      # use only N training images:
    subset_mode: str = "first"        # first (the first N) | stratified (N / classes per class)
    size: int = 32                    # side of the square images fed to the network
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    num_classes: int = 0
    # auto: device, or stream for a folder data set whose decoded copy would exceed
    # memory_budget_mb | device (decoded into memory, views made batched on the device) |
    # stream (files decoded per batch in DataLoader workers) | torchvision (per-image PIL)
    pipeline: str = "auto"
    memory_budget_mb: Optional[int] = None   # auto's budget; null: half the available memory
    decode: str = "cpu"               # stream: cpu (PIL in the workers) | cuda (nvJPEG, batched)
    classes_file: Optional[str] = None   # folder data sets: only these class folders (ImageNet-100)
    num_workers: int = 2              # DataLoader workers (torchvision and stream pipelines)
    small_size: Optional[int] = None  # side of multi-crop's small crops (CIFAR 24, STL-10 58)
    placement: str = "auto"           # pipeline=device: where the uint8 images live. auto: on the
                                      # GPU if they take <= 1/4 of its free memory, else host | device | host
    train_split: str = "train"        # stl10: train+unlabeled for pretraining
    test_split: str = "test"
    # spirograph only (generated, no download)
    num_train: int = 0
    num_test: int = 0


@dataclass
class ViewGroupConfig:
    """One view group: `count` views of `size` px; a field left null takes the augment
    group's value (so asymmetric views and multi-crop are configuration)."""
    count: int = 1
    size: Optional[int] = None                  # null: dataset.size
    crop_scale: Optional[List[float]] = None
    crop_ratio: Optional[List[float]] = None
    interpolation: Optional[str] = None
    flip_p: Optional[float] = None
    jitter_p: Optional[float] = None
    brightness: Optional[float] = None
    contrast: Optional[float] = None
    saturation: Optional[float] = None
    hue: Optional[float] = None
    grayscale_p: Optional[float] = None
    blur_p: Optional[float] = None
    blur_kernel_size: Optional[int] = None
    blur_sigma: Optional[List[float]] = None
    solarize_p: Optional[float] = None
    solarize_threshold: Optional[float] = None
    jitter_mode: Optional[str] = None


@dataclass
class AugmentConfig:
    """The base augmentation (every view group inherits it) and the view groups."""
    crop_scale: List[float] = MISSING
    crop_ratio: List[float] = MISSING
    interpolation: str = MISSING      # bilinear | bicubic
    flip_p: float = MISSING
    jitter_p: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    saturation: float = MISSING
    hue: float = MISSING
    grayscale_p: float = MISSING
    blur_p: float = MISSING
    blur_kernel_size: int = MISSING
    blur_sigma: List[float] = MISSING
    solarize_p: float = MISSING
    solarize_threshold: float = MISSING
    jitter_mode: str = MISSING        # torchvision (random order, exact HSV) | invclr (fixed order, YIQ hue)
    compile: bool = MISSING           # make the views through torch.compile (falls back to eager)
    groups: List[ViewGroupConfig] = MISSING     # the views of each image, group by group
    # multi-crop shortcut: a group of small crops appended after `groups`
    small_crops: int = MISSING
    small_size: Optional[int] = None            # null: dataset.small_size
    small_crop_scale: List[float] = MISSING


@dataclass
class EvalConfig:
    knn_every: int = 10               # epochs between kNN evaluations (and at the end); 0 = only at the end
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_max_train: Optional[int] = None   # cap on the kNN memory bank (None = whole train split)
    online_probe: bool = True         # linear classifier on detached features, trained alongside
    probe_lr: float = 1.0e-3          # its Adam learning rate
    tsne: bool = False                # t-SNE of test embeddings (tsne.png) at the end
    tsne_points: int = 2000           # test images in the t-SNE (exact t-SNE: O(n^2))
    linear: Optional[str] = None      # a linear-evaluation protocol (fast, supcontrast, ...: conf/
                                      # protocol/) run at the end; its top-1 in done.json and the last row


@dataclass
class TrainConfig:
    """Top-level keys shared by every pretraining entrypoint."""
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

    batch_size: int = MISSING         # global batch (all ranks together)
    epochs: int = MISSING
    max_steps: Optional[int] = None   # stop after this many optimizer steps (smoke runs)
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = False       # NHWC memory format (CUDA)
    compile: bool = False             # torch.compile the method
    compile_mode: str = "default"     # default | reduce-overhead (CUDA graphs: fewer kernel
                                      # launches) | max-autotune
    resume: bool = False              # continue from <run dir>/checkpoints/last.pt
    checkpoint_every: int = 0         # also keep epoch_N.pt every N epochs (0 = only last.pt)
    log_every: int = 10               # steps between tqdm postfix / TensorBoard scalars
    progress: bool = True             # tqdm progress bars
    tensorboard: bool = True
    wandb: bool = False               # also log to Weights & Biases (pip install -e '.[wandb]');
                                      # WANDB_MODE=offline writes the run under <run dir>/wandb
    wandb_project: str = "sslcifar"
    wandb_entity: Optional[str] = None
    wandb_name: Optional[str] = None  # default: the run directory's name
    run_dir: Optional[str] = None     # default: Hydra's run directory


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


# Keys that moved: the fix names where they went.
MOVED = {"method.num_views": "augment.groups.0.count (views come from the augmentation's view "
                             "groups; e.g. augment.groups.0.count=3)",
         "moco_k": "method.queue_size", "moco_t": "loss.temperature", "moco_m": "method.momentum"}


def unknown_key(full_key: str, known, fix_otherwise: str = "`--cfg job` prints every key") -> str:
    """`<full_key> is not a config key. Fix: use <the nearest known key>`."""
    import difflib
    if full_key in MOVED:
        return f"{full_key} is not a config key. Fix: use {MOVED[full_key]}"
    parent, _, name = full_key.rpartition(".")
    close = difflib.get_close_matches(name, list(known), n=1)
    fix = f"use {parent + '.' if parent else ''}{close[0]}" if close else fix_otherwise
    return f"{full_key} is not a config key. Fix: {fix}"


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
