"""Linear evaluation of a frozen encoder: a linear classifier on its features.

    python linear_eval.py backbone=resnet18                      # newest resnet18 run in outputs/
    python linear_eval.py pretrained=outputs/simclr/<date>_<time> recipe=fast
    python linear_eval.py pretrained=random backbone.width=16    # the untrained baseline
    python linear_eval.py pretrained=PATH dataset=spirograph     # R^2 of the generative parameters

Two recipes, same frozen encoder (eval mode: BatchNorm uses its running
statistics; no gradient reaches it, and every tensor of its state_dict is
compared bit for bit before and after, as MoCo's `sanity_check`):

- `standard` (a frozen probe like MoCo's / SupContrast's; the README lists how each
  original differs): SGD with momentum, no weight decay,
  cosine schedule, `epochs` passes over the training images, each batch
  augmented by random crop (padding 4 at 32 px) and horizontal flip. The
  features are standardised with the un-augmented training set's statistics
  first, so one learning rate suits any encoder.
- `fast`: the features of the un-augmented images are extracted once and a
  multinomial logistic regression is fitted on them, full batch, with L-BFGS
  (mean cross-entropy + l2/2 ||W||^2 on standardised features). Seconds.

For Spirograph (regression targets) both become least squares with a tiny
ridge from the features to the four generative parameters, scored by R^2.

Writes linear_eval.json and confusion_matrix.png to the run directory and
prints `linear_eval: top1=.. top5=.. (recipe, checkpoint)`.
"""
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data.sources import build_source
from .errors import UserError
from .knn import r2_scores
from .distributed import pick_device
from .features import extract
from .pretrained import load_encoder
from .schedule import lr_schedule

log = logging.getLogger("sslcifar")

RECIPES = ("fast", "standard")
LBFGS_ITERATIONS = 500          # the fast recipe converges well before this on CIFAR features
SPIROGRAPH_PARAMS = ("m", "b", "sigma", "red")


class BackboneChanged(RuntimeError):
    """The frozen encoder changed during linear evaluation: a bug, never a user error."""


# ---------------------------------------------------------------------- frozen-encoder check

def snapshot(module: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of every tensor of the state_dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: Dict[str, torch.Tensor]) -> None:
    """Raise BackboneChanged unless every tensor is bit-identical to `before`."""
    now = module.state_dict()
    changed = sorted(set(before) ^ set(now))
    changed += [k for k in before if k in now and not (
        before[k].shape == now[k].shape and before[k].dtype == now[k].dtype
        and torch.equal(before[k], now[k].to(before[k].device)))]
    if changed:
        raise BackboneChanged(f"the frozen encoder changed during linear evaluation: "
                              f"{len(changed)} tensor(s) differ, e.g. {', '.join(changed[:5])}")


# ---------------------------------------------------------------------- features and augmentation

def random_crop_flip(x: torch.Tensor, padding: int, fill: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """Batched RandomCrop(size, padding) + RandomHorizontalFlip on normalised images.

    x: [B, 3, S, S]; fill: [3] the normalised value of a black pixel (torchvision
    pads the raw image with 0). Each image gets its own offset and flip.
    """
    b, _, s, _ = x.shape
    fill = fill.view(1, 3, 1, 1).to(x)
    padded = F.pad(x - fill, (padding,) * 4) + fill                   # [B, 3, S+2p, S+2p]
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
    r = torch.arange(s, device=x.device)
    rows = (dy[:, None] + r)[:, None, :, None]                         # [B, 1, S, 1]
    cols = (dx[:, None] + r)[:, None, None, :]                         # [B, 1, 1, S]
    out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                 torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


# ---------------------------------------------------------------------- the linear models

class LinearClassifier(nn.Module):
    """Standardisation with fixed (training set) statistics, then one linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.fc = nn.Linear(mean.numel(), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc((features - self.mean) / self.std)


def feature_stats(features: torch.Tensor):
    """Per-dimension mean and std [F] (std floored: dead ReLU units are constant)."""
    return features.mean(0), features.std(0).clamp_min(1e-6)


def fit_fast(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int, l2: float,
             iterations: int = LBFGS_ITERATIONS) -> LinearClassifier:
    """Multinomial logistic regression, full batch L-BFGS on standardised features:
    minimises mean CE + l2/2 ||W||^2 (the bias is not penalised)."""
    clf = LinearClassifier(*feature_stats(train_f), num_classes).to(train_f.device)
    nn.init.zeros_(clf.fc.weight)
    nn.init.zeros_(clf.fc.bias)
    z = (train_f - clf.mean) / clf.std                                # [N, F], fixed
    opt = torch.optim.LBFGS(clf.fc.parameters(), lr=1, max_iter=iterations, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf.fc(z), train_y) + 0.5 * l2 * clf.fc.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return clf


def fit_standard(backbone: nn.Module, source, index: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, stats, cfg, device: torch.device) -> dict:
    """SGD on augmented images through the frozen encoder. index [N]: the training
    images, labels [N]: their classes, stats: the un-augmented features' (mean, std).
    Returns {"classifier", "epochs" (may be fractional with max_steps), "steps"}."""
    from tqdm import tqdm
    torch.manual_seed(cfg.seed)
    clf = LinearClassifier(*stats, num_classes).to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    n, bs = len(index), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)                 # every image each epoch, last batch smaller
    total = cfg.epochs * steps_per_epoch
    last = total if cfg.max_steps is None else min(cfg.max_steps, total)
    lrs = lr_schedule(cfg.lr, total, 0, 0.0, "cosine").tolist()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    d = cfg.dataset
    padding = max(1, round(4 * d.size / 32))            # 4 px at CIFAR's 32 px
    fill = -torch.tensor(d.mean) / torch.tensor(d.std)  # a black pixel, normalised
    step = 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g, device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"linear epoch {epoch}", leave=False,
                   disable=not cfg.progress, dynamic_ncols=True)
        for i in bar:
            sel = perm[i * bs:(i + 1) * bs]
            x = random_crop_flip(source.plain(index[sel]), padding, fill, g)
            with torch.no_grad():
                f = backbone(x).float()                 # eval mode: running BN statistics
            loss = F.cross_entropy(clf(f), labels[sel])
            for group in opt.param_groups:
                group["lr"] = lrs[step]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0 or step == last:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lrs[step - 1]:.4g}")
            if step == last:
                break
        bar.close()
        if step == last:
            break
    return {"classifier": clf, "epochs": step / steps_per_epoch, "steps": step}


def ridge_regression(train_f: torch.Tensor, train_t: torch.Tensor, ridge: float):
    """Least squares with a tiny ridge, in float64: returns predict(features) -> [M, P]."""
    mean, std = feature_stats(train_f)
    z = ((train_f - mean) / std).double()
    t_mean = train_t.double().mean(0)
    a = z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    w = torch.linalg.solve(a, z.T @ (train_t.double() - t_mean))        # [F, P]
    return lambda f: (((f - mean) / std).double() @ w + t_mean).float()


# ---------------------------------------------------------------------- scores and figures

def classification_scores(logits: torch.Tensor, labels: torch.Tensor,
                          classes: List[str]) -> dict:
    """top1/top5 (%), per-class accuracy (%) and the confusion matrix (rows: true class)."""
    c = logits.shape[1]
    top = logits.topk(min(5, c), dim=1).indices
    hit = top == labels[:, None]
    conf = torch.zeros(c, c, dtype=torch.int64)
    conf.index_put_((labels.cpu(), top[:, 0].cpu()), torch.ones(len(labels), dtype=torch.int64),
                    accumulate=True)
    per_class = {}
    for i in range(c):
        total = int(conf[i].sum())
        if total:
            per_class[classes[i]] = 100.0 * int(conf[i, i]) / total
    return {"top1": 100.0 * hit[:, 0].float().mean().item(),
            "top5": 100.0 * hit.any(1).float().mean().item(),
            "per_class": per_class, "confusion_matrix": conf.tolist()}


def confusion_png(conf: List[List[int]], classes: List[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class x predicted class) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = torch.tensor(conf, dtype=torch.float64)
    m = (m / m.sum(1, keepdim=True).clamp_min(1)).numpy()
    c = len(classes)
    side = min(4 + 0.5 * c, 16)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    if c <= 20:
        ax.set_xticks(range(c), classes, rotation=45, ha="right")
        ax.set_yticks(range(c), classes)
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------- the entrypoint's work

def validate(cfg) -> None:
    def require(ok, key, value, allowed):
        if not ok:
            raise UserError(f"{key}={value} is not allowed: {allowed}")
    require(cfg.recipe in RECIPES, "recipe", cfg.recipe, "use fast or standard")
    require(cfg.epochs >= 1, "epochs", cfg.epochs, "needs >= 1")
    require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "needs >= 1")
    require(cfg.lr > 0, "lr", cfg.lr, "needs > 0")
    require(cfg.l2 >= 0, "l2", cfg.l2, "needs >= 0")
    require(cfg.ridge >= 0, "ridge", cfg.ridge, "needs >= 0")
    require(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", cfg.max_steps,
            "needs >= 1 or null")
    pick_device(cfg.device)


def run_dir_of(cfg) -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UserError("no run directory: launch through linear_eval.py")


def linear_eval(cfg, run_dir: Optional[Path] = None) -> dict:
    # ------------------------------------------------------------------ setup
    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True          # fixed image size: pick the fastest kernels
    t0 = time.perf_counter()

    # ------------------------------------------------------------------ frozen encoder
    enc = load_encoder(cfg)
    log.info("encoder: %s", enc.describe)
    if enc.config is not None and enc.config.get("dataset", {}).get("name") != cfg.dataset.name:
        log.warning("the encoder was pretrained on %s; evaluating on dataset=%s",
                    enc.config.get("dataset", {}).get("name"), cfg.dataset.name)
    backbone = enc.backbone.to(device).eval()
    before = snapshot(backbone)

    # ------------------------------------------------------------------ data
    train_src = build_source(cfg, "train", device)
    test_src = build_source(cfg, "test", device)
    regression = train_src.task == "regression"
    train_index = torch.arange(len(train_src), device=device)
    if not regression:
        train_index = train_index[train_src.labels >= 0]        # STL-10's unlabeled part cannot train
        if len(train_index) == 0:
            raise UserError(f"dataset {cfg.dataset.name} split '{cfg.dataset.train_split}' has no "
                            f"labelled images. Fix: dataset.train_split=train")
    test_index = torch.arange(len(test_src), device=device)
    train_f = extract(backbone, train_src, train_index, cfg.batch_size, progress=cfg.progress,
                      desc="train features")
    test_f = extract(backbone, test_src, test_index, cfg.batch_size, progress=cfg.progress,
                     desc="test features")

    # ------------------------------------------------------------------ fit and score
    result = {"checkpoint": str(enc.path) if enc.path is not None else "random",
              "checkpoint_format": enc.format,
              "backbone": {"name": enc.name, "width": enc.width, "stem": enc.stem},
              "dataset": cfg.dataset.name, "num_train": len(train_index),
              "num_test": len(test_index), "seed": cfg.seed}
    if regression:
        log.info("dataset=%s: ridge regression of the generative parameters (recipe=%s does "
                 "not apply)", cfg.dataset.name, cfg.recipe)
        predict = ridge_regression(train_f, train_src.targets.float(), cfg.ridge)
        r2 = r2_scores(predict(test_f), test_src.targets.float()).tolist()
        result.update(task="regression", recipe="ridge", epochs=None, ridge=cfg.ridge,
                      r2=sum(r2) / len(r2), r2_per_parameter=dict(zip(SPIROGRAPH_PARAMS, r2)))
    else:
        labels = train_src.labels[train_index]
        num_classes = cfg.dataset.num_classes or int(max(labels.max(), test_src.labels.max())) + 1
        if cfg.recipe == "fast":
            clf = fit_fast(train_f, labels, num_classes, cfg.l2)
            result.update(epochs=None, l2=cfg.l2, lbfgs_iterations=LBFGS_ITERATIONS)
        else:
            fit = fit_standard(backbone, train_src, train_index, labels, num_classes,
                               feature_stats(train_f), cfg, device)
            clf = fit["classifier"]
            result.update(epochs=fit["epochs"], steps=fit["steps"], lr=cfg.lr,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          batch_size=cfg.batch_size)
        with torch.no_grad():
            logits = clf(test_f)
        classes = list(test_src.classes) or [str(i) for i in range(num_classes)]
        classes += [str(i) for i in range(len(classes), num_classes)]
        result.update(task="classification", recipe=cfg.recipe,
                      **classification_scores(logits, test_src.labels, classes))

    # ------------------------------------------------------------------ check and write
    # the MoCo sanity check: the encoder must come out exactly as it went in
    assert_unchanged(backbone, before)
    result["seconds"] = time.perf_counter() - t0
    (run_dir / "linear_eval.json").write_text(json.dumps(result, indent=2))
    if regression:
        line = f"linear_eval: r2={result['r2']:.4f} (ridge, {result['checkpoint']})"
    else:
        confusion_png(result["confusion_matrix"], classes, run_dir / "confusion_matrix.png",
                      f"{cfg.dataset.name} linear eval ({cfg.recipe}): top-1 {result['top1']:.2f}%")
        line = (f"linear_eval: top1={result['top1']:.2f} top5={result['top5']:.2f} "
                f"({result['recipe']}, {result['checkpoint']})")
    print(line, flush=True)
    return result
