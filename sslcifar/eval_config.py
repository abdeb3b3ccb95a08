"""Typed schemas of the evaluation entrypoints: linear_eval.py, `python -m
sslcifar.knn` and `python -m sslcifar.figures tsne`.

They reuse the `backbone` and `dataset` groups of the pretraining tree
(`BackboneConfig`, `DatasetConfig`), so `backbone=resnet18 dataset=cifar100`
means the same thing everywhere.

As in sslcifar/config.py, the values live in the YAML files of `conf/`
(`linear_eval.yaml`, `knn.yaml`, `tsne.yaml`); the dataclasses give types.
"""
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .config import BackboneConfig, DatasetConfig


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
    recipe: str = MISSING             # fast (L-BFGS on cached features) | standard (SGD, augmented)
    epochs: int = MISSING             # standard recipe only
    lr: float = MISSING               # standard recipe: SGD learning rate (cosine to 0)
    weight_decay: float = 0.0         # standard recipe
    momentum: float = 0.9             # standard recipe
    l2: float = MISSING               # fast recipe: L2 penalty on the weights (standardised features)
    max_steps: Optional[int] = None   # standard recipe: stop after this many SGD steps (smoke runs)
    ridge: float = MISSING            # spirograph: ridge penalty of the least-squares regression


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
