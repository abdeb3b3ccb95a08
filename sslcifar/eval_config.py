"""Typed schemas of the evaluation entrypoints: linear_eval.py, `python -m
sslcifar.knn` and `python -m sslcifar.figures tsne`.

They reuse the `backbone` and `dataset` groups of the pretraining tree
(`BackboneConfig`, `DatasetConfig`), so `backbone=resnet18 dataset=cifar100`
means the same thing everywhere.

As in sslcifar/config.py, the values live in the YAML files of `conf/`
(`linear_eval.yaml`, `knn.yaml`, `tsne.yaml`); the dataclasses give types.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .config import AugmentConfig, BackboneConfig, DatasetConfig


@dataclass
class EncoderEvalConfig:
    """What every evaluation needs: an encoder, a data set, a device."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    # a checkpoint file, a run directory, `random` (a seeded untrained encoder), or
    # null: the newest pretraining run under outputs/ whose backbone matches
    pretrained: Optional[str] = None
    batch_size: int = MISSING         # images per forward pass (and per SGD step)
    device: str = "auto"              # auto | cpu | cuda
    seed: int = 0
    progress: bool = True             # tqdm progress bars


@dataclass
class LinearEvalConfig(EncoderEvalConfig):
    """Types only: conf/linear_eval.yaml holds the values (our `standard` protocol) and
    conf/protocol/<name>.yaml what each original's evaluation does differently."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # inputs=transformed
    protocol: str = MISSING           # the name recorded in linear_eval.json
    recipe: str = MISSING             # fast (L-BFGS on cached features) | standard (SGD, augmented)
    # standard recipe (SGD)
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    schedule: str = MISSING           # cosine | step | simclr_cifar10 (linear_eval.probe_lr)
    schedule_unit: str = MISSING      # cosine per step | per epoch
    milestones: List[int] = MISSING   # step: the epochs at which lr *= lr_gamma
    lr_gamma: float = MISSING
    train_augment: str = MISSING      # crop_flip (4 px padding) | resized_crop_flip | none
    crop_scale: List[float] = MISSING  # resized_crop_flip's scale range
    standardize: bool = MISSING       # features standardised with the training set's statistics
    fc_init: str = MISSING            # default (torch's) | normal (N(0, 0.01), bias 0)
    finetune: bool = MISSING          # train the encoder too, in train mode (SimCLR-CIFAR10)
    report: str = MISSING             # last | best | lowest_train_loss: which epoch is `top1`
    drop_last: bool = MISSING         # leave out the last incomplete batch of each epoch
    max_steps: Optional[int] = None   # stop after this many SGD steps (smoke runs)
    # fast recipe (L-BFGS)
    l2: float = MISSING               # L2 penalty on the weights: mean CE + l2/2 ||W||^2
    lbfgs_steps: int = MISSING        # L-BFGS calls
    lbfgs_max_iter: int = MISSING     # iterations per call
    lbfgs_line_search: str = MISSING  # strong_wolfe | none
    ridge: float = MISSING            # spirograph: ridge penalty of the least-squares regression
    regression: str = MISSING         # spirograph: ridge (least squares) | lbfgs (the invariance
                                      # reproduction's: MSE + reg_weight ||W||^2, L-BFGS)
    reg_weight: float = MISSING
    # the inputs whose features are fitted and scored: untransformed (the plain images) |
    # transformed (augmented by `augment`, averaged over `passes` views: feature averaging)
    inputs: str = MISSING
    passes: int = MISSING
    invariance_images: int = MISSING  # > 0: the measured invariance on this many test images
    invariance_samples: int = MISSING  # fresh nuisance draws per image (the penalty's M)


@dataclass
class KnnEvalConfig(EncoderEvalConfig):
    k: int = MISSING                  # neighbours that vote
    temperature: float = MISSING      # T of the vote weights exp(sim / T)
    max_train: Optional[int] = None   # cap on the memory bank (None = whole train split)


@dataclass
class TsneConfig(EncoderEvalConfig):
    split: str = MISSING              # train | test: which images are embedded
    num_points: int = MISSING         # the first N images of the split (exact t-SNE is O(N^2))
    perplexity: float = MISSING
    iterations: int = MISSING
    out: Optional[str] = None         # PNG path; default <run dir>/tsne.png


def register_eval_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="linear_eval_schema", node=LinearEvalConfig)
    cs.store(name="knn_schema", node=KnnEvalConfig)
    cs.store(name="tsne_schema", node=TsneConfig)
