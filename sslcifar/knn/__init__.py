"""Weighted k-nearest-neighbour evaluation of a frozen encoder (Wu et al., 2018,
as in the MoCo / SogCLR CIFAR monitors): cosine similarity of L2-normalised
features, the k most similar training images vote with weight exp(sim / T).

For Spirograph (regression targets) the prediction is the weighted mean of the
neighbours' generative parameters and the score is R^2, averaged over them.

The training loop calls `knn_evaluate`; the same evaluation of any saved encoder:

    python -m sslcifar.knn pretrained=outputs/simclr/<date>_<time> [k=200 temperature=0.1]
"""
from typing import Dict, Optional

import torch
from torch import nn

from ..features import extract


def knn_classify(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 num_classes: int, k: int, temperature: float,
                 chunk: int = 1024) -> torch.Tensor:
    """Class scores [M, C] for test features [M, F] from a bank [N, F] with labels [N]."""
    k = min(k, train_f.shape[0])
    scores = []
    for q in test_f.split(chunk):
        sim, idx = (q @ train_f.T).topk(k, dim=1)                         # [m, k]
        w = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, train_y[idx], w)
        scores.append(votes)
    return torch.cat(scores)


def knn_regress(train_f, train_t, test_f, k: int, temperature: float,
                chunk: int = 1024) -> torch.Tensor:
    """Weighted mean of the neighbours' targets: [M, P] from a bank [N, F], targets [N, P]."""
    k = min(k, train_f.shape[0])
    preds = []
    for q in test_f.split(chunk):
        sim, idx = (q @ train_f.T).topk(k, dim=1)
        w = torch.softmax(sim / temperature, dim=1)                        # [m, k]
        preds.append((w[:, :, None] * train_t[idx]).sum(1))
    return torch.cat(preds)


def r2_scores(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per column: 1 - SSE / SST, [P]."""
    sse = ((pred - target) ** 2).sum(0)
    sst = ((target - target.mean(0)) ** 2).sum(0)
    return 1 - sse / sst.clamp_min(1e-12)


@torch.no_grad()
def knn_scores(train_f: torch.Tensor, test_f: torch.Tensor, train_source, test_source, k: int,
               temperature: float) -> Dict[str, float]:
    """{'knn_top1': %} for labelled data, {'knn_r2': ...} for Spirograph, from L2-normalised
    features: train_f [N, F] of the first N training images, test_f [M, F] of the test split."""
    n = train_f.shape[0]
    if train_source.task == "regression":
        pred = knn_regress(train_f, train_source.targets[:n].float(), test_f, k, temperature)
        return {"knn_r2": r2_scores(pred, test_source.targets.float()).mean().item()}
    labels = train_source.labels[:n]
    keep = labels >= 0                                  # STL-10's unlabeled images cannot vote
    num_classes = int(max(labels.max(), test_source.labels.max())) + 1
    scores = knn_classify(train_f[keep], labels[keep], test_f, num_classes, k, temperature)
    top1 = (scores.argmax(1) == test_source.labels).float().mean().item() * 100
    return {"knn_top1": top1}


@torch.no_grad()
def knn_evaluate(backbone: nn.Module, train_source, test_source, k: int, temperature: float,
                 max_train: Optional[int] = None, batch_size: int = 512) -> Dict[str, float]:
    """kNN of an encoder: its features of the two splits, then knn_scores."""
    train_f = extract(backbone, train_source, batch_size=batch_size, normalize=True, limit=max_train)
    test_f = extract(backbone, test_source, batch_size=batch_size, normalize=True)
    return knn_scores(train_f, test_f, train_source, test_source, k, temperature)


# ---------------------------------------------------------------------- the command's work

def knn_from_config(cfg, run_dir) -> Dict[str, float]:
    """`python -m sslcifar.knn`: kNN of a pretrained encoder; writes knn.json to run_dir."""
    import json
    from pathlib import Path
    from ..data.sources import build_source
    from ..distributed import pick_device
    from ..pretrained import load_encoder
    from ..ranges import check_ranges
    check_ranges(cfg)
    device = pick_device(cfg.device)
    enc = load_encoder(cfg)
    train_src = build_source(cfg, "train", device)
    test_src = build_source(cfg, "test", device)
    scores = knn_evaluate(enc.backbone.to(device), train_src, test_src, cfg.k, cfg.temperature,
                          cfg.max_train, cfg.batch_size)
    checkpoint = str(enc.path) if enc.path is not None else "random"
    n_train = len(train_src) if cfg.max_train is None else min(cfg.max_train, len(train_src))
    result = {**scores, "checkpoint": checkpoint, "checkpoint_format": enc.format,
              "backbone": {"name": enc.name, "width": enc.width, "stem": enc.stem},
              "dataset": cfg.dataset.name, "k": cfg.k, "temperature": cfg.temperature,
              "num_train": n_train, "num_test": len(test_src)}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "knn.json").write_text(json.dumps(result, indent=2))
    score = (f"top1={scores['knn_top1']:.2f}" if "knn_top1" in scores
             else f"r2={scores['knn_r2']:.4f}")
    print(f"knn: {score} (k={cfg.k}, T={cfg.temperature:g}, {checkpoint})", flush=True)
    return result
