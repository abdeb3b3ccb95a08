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

from .config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, AugmentConfig, BackboneConfig, DatasetConfig
from .ranges import declared


@dataclass
class EncoderEvalConfig:
    """What every evaluation needs: an encoder, a data set, a device (values:
    conf/common/evaluation.yaml and each command's file)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    # a checkpoint file, a run directory, `random` (a seeded untrained encoder), or
    # null: the newest pretraining run under outputs/ whose backbone matches
    pretrained: Optional[str] = MISSING
    batch_size: int = declared(AT_LEAST_1)   # images per forward pass (and per SGD step)
    device: str = declared(choices=("auto", "cpu", "cuda"))
    seed: int = MISSING
    progress: bool = MISSING          # tqdm progress bars


@dataclass
class LinearEvalConfig(EncoderEvalConfig):
    """Types only: conf/linear_eval.yaml holds the values (our `standard` protocol) and
    conf/protocol/<name>.yaml what each original's evaluation does differently."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # inputs=transformed
    protocol: str = MISSING           # the name recorded in linear_eval.json
    # fast (L-BFGS on cached features) | standard (SGD, augmented)
    recipe: str = declared(choices=("fast", "standard"))
    # standard recipe (SGD)
    epochs: int = declared(AT_LEAST_1)
    lr: float = declared(POSITIVE)
    weight_decay: float = declared(NON_NEGATIVE)
    momentum: float = declared(PROBABILITY)
    nesterov: bool = MISSING
    # cosine | step | simclr_cifar10 (linear_eval.probe_lrs)
    schedule: str = declared(choices=("cosine", "step", "simclr_cifar10"))
    schedule_unit: str = declared(choices=("step", "epoch"))    # cosine per step | per epoch
    milestones: List[int] = declared(NON_NEGATIVE)    # step: the epochs at which lr *= lr_gamma
    lr_gamma: float = declared(POSITIVE)
    # crop_flip (4 px padding) | resized_crop_flip | none | cached (the training images'
    # features computed once, averaged over `passes` views with inputs=transformed: EMP-SSL's)
    train_augment: str = declared(choices=("crop_flip", "resized_crop_flip", "none", "cached"))
    crop_scale: List[float] = declared("(0, 1]", pair=True)   # resized_crop_flip's scale range
    standardize: bool = MISSING       # features standardised with the training set's statistics
    fc_init: str = declared(choices=("default", "normal"))     # torch's | N(0, 0.01), bias 0
    finetune: bool = MISSING          # train the encoder too, in train mode (SimCLR-CIFAR10)
    opt: str = declared(choices=("sgd", "adamw"))   # sgd (momentum, nesterov) | adamw (MAE's fine-tuning)
    layer_decay: float = declared("(0, 1]")          # < 1: layer-wise lr decay of a ViT (finetune=true)
    # which epoch is `top1`
    report: str = declared(choices=("last", "best", "lowest_train_loss"))
    drop_last: bool = MISSING         # leave out the last incomplete batch of each epoch
    max_steps: Optional[int] = declared(AT_LEAST_1)   # stop after this many SGD steps (smoke runs)
    # fast recipe (L-BFGS)
    l2: float = declared(NON_NEGATIVE)    # L2 penalty on the weights: mean CE + l2/2 ||W||^2
    lbfgs_steps: int = declared(AT_LEAST_1)       # L-BFGS calls
    lbfgs_max_iter: int = declared(AT_LEAST_1)    # iterations per call
    lbfgs_line_search: str = declared(choices=("strong_wolfe", "none"))
    ridge: float = declared(NON_NEGATIVE)     # spirograph: ridge penalty of the least-squares regression
    # spirograph: ridge (least squares) | lbfgs (the invariance reproduction's: MSE + reg_weight
    # ||W||^2, L-BFGS)
    regression: str = declared(choices=("ridge", "lbfgs"))
    reg_weight: float = declared(NON_NEGATIVE)
    # the inputs whose features are fitted and scored: untransformed (the plain images) |
    # transformed (augmented by `augment`, averaged over `passes` views: feature averaging)
    inputs: str = declared(choices=("untransformed", "transformed"))
    passes: int = declared(AT_LEAST_1)
    invariance_images: int = declared(NON_NEGATIVE)   # > 0: the measured invariance on this many test images
    invariance_samples: int = declared(AT_LEAST_1)    # fresh nuisance draws per image (the penalty's M)


@dataclass
class KnnEvalConfig(EncoderEvalConfig):
    k: int = declared(AT_LEAST_1)             # neighbours that vote
    temperature: float = declared(POSITIVE)   # T of the vote weights exp(sim / T)
    max_train: Optional[int] = declared(AT_LEAST_1)   # cap on the memory bank (null = whole train split)


@dataclass
class TsneConfig(EncoderEvalConfig):
    split: str = declared(choices=("train", "test"))   # which images are embedded
    num_points: int = declared("[4, inf)")    # the first N images of the split (exact t-SNE is O(N^2))
    perplexity: float = declared(POSITIVE)
    iterations: int = declared(AT_LEAST_1)
    out: Optional[str] = MISSING      # PNG path; null: <run dir>/tsne.png


def register_eval_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="linear_eval_schema", node=LinearEvalConfig)
    cs.store(name="knn_schema", node=KnnEvalConfig)
    cs.store(name="tsne_schema", node=TsneConfig)
