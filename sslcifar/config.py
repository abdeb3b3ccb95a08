"""Typed schemas for the Hydra config tree.

Every group in `conf/` (method, backbone, loss, optimizer, scheduler, dataset,
augment, eval) is validated against one dataclass here. The primary configs
(`conf/simclr.yaml`, `conf/moco.yaml`, `conf/linear_eval.yaml`) list the
matching schema first in their defaults list, so Hydra merges every YAML file
and every command-line override into a *typed, struct-mode* config: a
misspelt key or a value of the wrong type fails at composition with Hydra's
own message naming the key.

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
class MethodConfig:
    name: str = MISSING          # simclr | moco | sogclr | supcon | supervised
    num_views: int = 2           # augmented views per image fed to the method
    proj_hidden_dim: Optional[int] = 2048  # projection MLP hidden width; None = backbone feature size
    proj_out_dim: int = 128      # projection output (embedding) size
    proj_layers: int = 2         # linear layers in the projection MLP
    proj_bn: bool = True         # BatchNorm after each hidden linear layer
    proj_last_bn: bool = False   # BatchNorm (no affine) after the last linear (MoCo v3 / SogCLR style)
    # MoCo only
    queue_size: int = 4096       # K: negatives kept in the queue
    momentum: float = 0.99       # m: EMA coefficient of the key encoder
    symmetric: bool = False      # symmetrised loss (both views as queries)
    shuffle_bn: bool = True      # shuffle the key batch (across ranks; within it on one process)
    bn_splits: int = 1           # backbone BatchNorm statistics per group of batch/bn_splits
                                 # images (MoCo CIFAR demo: 8, one GPU acting as 8)


@dataclass
class LossConfig:
    name: str = MISSING               # nt_xent | supcon | moco_infonce | sogclr | cross_entropy
    temperature: float = 0.5
    base_temperature: float = 0.07    # SupCon's loss scale T/base_T
    gamma: float = 0.9                # SogCLR: weight of the new estimate in u


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


@dataclass
class SchedulerConfig:
    name: str = MISSING               # cosine | constant
    warmup_epochs: float = 0.0
    final_lr: float = 0.0             # absolute floor reached at the last step


@dataclass
class DatasetConfig:
    name: str = MISSING               # cifar10 | cifar100 | stl10 | imagefolder | spirograph
    root: str = "data"                # folder holding the data (relative to the launch directory)
    download: bool = False            # let torchvision download cifar/stl when missing
    subset: Optional[int] = None      # use only the first N training images
    size: int = 32                    # side of the square images fed to the network
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    num_classes: int = 0
    pipeline: str = "device"          # device (batched, in memory) | torchvision (per-image PIL in workers)
    num_workers: int = 2              # DataLoader workers, torchvision pipeline only
    placement: str = "auto"           # pipeline=device: where the uint8 images live. auto: on the
                                      # GPU if they take <= 1/4 of its free memory, else host | device | host
    train_split: str = "train"        # stl10: train+unlabeled for pretraining
    test_split: str = "test"
    # spirograph only (generated, no download)
    num_train: int = 0
    num_test: int = 0


@dataclass
class AugmentConfig:
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333333333333])
    interpolation: str = "bilinear"   # bilinear | bicubic
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel_size: int = 3
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5


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


@dataclass
class TrainConfig:
    """Top-level keys shared by every pretraining entrypoint."""
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    loss: LossConfig = field(default_factory=LossConfig)
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
    resume: bool = False              # continue from <run dir>/checkpoints/last.pt
    checkpoint_every: int = 0         # also keep epoch_N.pt every N epochs (0 = only last.pt)
    log_every: int = 10               # steps between tqdm postfix / TensorBoard scalars
    progress: bool = True             # tqdm progress bars
    tensorboard: bool = True
    run_dir: Optional[str] = None     # default: Hydra's run directory


@dataclass
class MocoTrainConfig(TrainConfig):
    """moco.py keeps the original MoCo-on-CIFAR command-line names."""
    moco_k: int = MISSING
    moco_t: float = MISSING
    moco_m: float = MISSING


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="moco_schema", node=MocoTrainConfig)


def as_dict(cfg: Any) -> dict:
    """Plain, resolved dict of a config (what checkpoints and logs store)."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True)
