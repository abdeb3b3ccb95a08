"""Linear evaluation of an encoder: a linear classifier on its features, by protocol.

    python linear_eval.py backbone=resnet18                      # newest resnet18 run in outputs/
    python linear_eval.py pretrained=outputs/simclr/<date>_<time> recipe=fast
    python linear_eval.py pretrained=PATH protocol=supcontrast   # SupContrast's main_linear.py
    python linear_eval.py pretrained=random backbone.width=16    # the untrained baseline
    python linear_eval.py pretrained=PATH dataset=spirograph     # R^2 of the generative parameters

A protocol (conf/protocol/<name>.yaml) sets the fields below as an original repository's
evaluation script does; each field can also be set alone. Two recipes:

- `standard` (SGD): `epochs` passes over the training images, each batch augmented on
  the device (`train_augment`: random crop with 4 px padding and flip, or
  RandomResizedCrop(crop_scale) and flip; or `cached`: the features computed once, of
  the plain images or averaged over `passes` views, EMP-SSL's), SGD with momentum, a `schedule` (cosine per
  step or per epoch, step decay at `milestones` by `lr_gamma`, or SimCLR-CIFAR10's), the
  features standardised with the training set's statistics (`standardize`), the last layer
  initialised by torch or N(0, 0.01) (`fc_init`), and the test top-1 reported as `report`
  says (last epoch, best epoch, or the epoch of the lowest training loss; all three kept).
- `fast`: the features of the un-augmented images are extracted once and a multinomial
  logistic regression is fitted on them with full-batch L-BFGS (mean cross-entropy +
  l2/2 ||W||^2). Seconds.

The encoder is frozen (eval mode: BatchNorm uses its running statistics; no gradient
reaches it, and every tensor of its state_dict is compared bit for bit before and after,
as MoCo's `sanity_check`), except with `finetune=true`, which trains it too, in train mode,
as SimCLR-CIFAR10's simclr_lin.py really does.

For Spirograph (regression targets) both become least squares with a tiny ridge from the
features to the four generative parameters, scored by R^2.

Writes linear_eval.json and confusion_matrix.png to the run directory and
prints `linear_eval: top1=.. top5=.. (protocol, checkpoint)`.
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
from .metrics import progress_enabled
from .optim import layer_decay_groups
from .distributed import pick_device
from .features import extract
from .paths import config_dir
from .pretrained import load_encoder
from .ranges import check_ranges
from .schedule import cosine_scheduler, per_epoch
from .version import code_version

log = logging.getLogger("sslcifar")

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
             iterations: int, steps: int, line_search: str, standardize: bool) -> LinearClassifier:
    """Multinomial logistic regression, full batch L-BFGS: minimises mean CE + l2/2 ||W||^2
    (the bias is not penalised), on standardised features unless standardize=False.

    Ours: one L-BFGS call of up to `iterations` iterations with a strong-Wolfe line search,
    from zero weights. The invariance-by-gradient reproduction's evaluate/lbfgs.py: 500
    calls (`steps`) of torch's default L-BFGS (20 iterations, no line search), from torch's
    default initialisation of the layer."""
    stats = feature_stats(train_f) if standardize else _identity_stats(train_f)
    clf = LinearClassifier(*stats, num_classes).to(train_f.device)
    if line_search == "strong_wolfe":
        nn.init.zeros_(clf.fc.weight)
        nn.init.zeros_(clf.fc.bias)
    z = (train_f - clf.mean) / clf.std                                # [N, F], fixed
    opt = torch.optim.LBFGS(clf.fc.parameters(), lr=1, max_iter=iterations, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn=None if line_search == "none" else line_search)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf.fc(z), train_y) + 0.5 * l2 * clf.fc.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(steps):
            opt.step(closure)
    return clf


def _identity_stats(features: torch.Tensor):
    """Mean 0, std 1: LinearClassifier without standardisation."""
    f = features.shape[1]
    return (torch.zeros(f, device=features.device), torch.ones(f, device=features.device))


def random_resized_crop_flip(x: torch.Tensor, scale, generator: torch.Generator) -> torch.Tensor:
    """Batched RandomResizedCrop(size, scale) + RandomHorizontalFlip of normalised images
    x [B, 3, S, S] (bilinear: a linear map, so it commutes with the normalisation)."""
    from .data.ops import resized_crop, sample_crop_boxes
    b, _, s, _ = x.shape
    box = sample_crop_boxes(b, s, s, tuple(scale), (3 / 4, 4 / 3), generator, x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    return resized_crop(x, *box, s, "bilinear", flip=flip)


def probe_lrs(cfg, steps_per_epoch: int) -> List[float]:
    """The probe's learning rate at every step of the fit: cfg.schedule per cfg.schedule_unit.

    cosine, per step: ours, from lr to 0 at the last step; per epoch: the originals'
    lr * (1 + cos(pi e / E)) / 2 (SogCLR's lincls.py: never 0). step: lr * lr_gamma^(milestones
    passed), per epoch (SupContrast, MoCo, solo-learn). simclr_cifar10: simclr_lin.py's
    LambdaLR, lr * (1e-3 + (0.6 - 1e-3)(1 + cos(pi t / (1000 epochs))) / 2) per step (its
    pretraining length and lr in the factor, as the script has it). The cosines are
    sslcifar.schedule's, as every other schedule of the suite."""
    epochs, total = cfg.epochs, cfg.epochs * steps_per_epoch
    if cfg.schedule == "step":
        lrs = torch.tensor([cfg.lr * cfg.lr_gamma ** sum(e >= m for m in cfg.milestones)
                            for e in range(epochs)], dtype=torch.float64)
        return per_epoch(lrs, steps_per_epoch).tolist()
    if cfg.schedule == "simclr_cifar10":
        return (cfg.lr * cosine_scheduler(0.6, 1e-3, 1000 * steps_per_epoch + 1)[:total]).tolist()
    if cfg.schedule_unit == "epoch":
        return per_epoch(cosine_scheduler(cfg.lr, 0.0, epochs + 1)[:epochs], steps_per_epoch).tolist()
    return cosine_scheduler(cfg.lr, 0.0, total).tolist()


def probe_optimizer(clf: nn.Module, backbone: nn.Module, cfg) -> torch.optim.Optimizer:
    """cfg.opt over the classifier, and the encoder too with cfg.finetune: sgd (momentum,
    nesterov, weight decay on everything: the originals' probes) or adamw (MAE's fine-tuning,
    decoupled weight decay). layer_decay < 1 (fine-tuning a ViT): the encoder in layer-wise
    lr-decay groups as MAE's (optim.layer_decay_groups), the classifier's bias without decay."""
    if cfg.finetune and cfg.layer_decay < 1:
        groups = layer_decay_groups(backbone, cfg.layer_decay, cfg.weight_decay)
        groups += [{"params": [clf.fc.weight], "weight_decay": cfg.weight_decay},
                   {"params": [clf.fc.bias], "weight_decay": 0.0}]
    else:
        groups = [{"params": list(clf.parameters()) +
                   (list(backbone.parameters()) if cfg.finetune else [])}]
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def fit_sgd(backbone: nn.Module, source, index: torch.Tensor, labels: torch.Tensor,
            num_classes: int, stats, cfg, device: torch.device, test_logits=None,
            cached: Optional[torch.Tensor] = None) -> dict:
    """SGD on augmented images through the encoder (frozen, or trained with cfg.finetune),
    or, with cfg.train_augment == "cached", on `cached` [N, F], the training images'
    features computed once. index [N]: the training images, labels [N]: their classes,
    stats: the un-augmented features' (mean, std) for standardisation. test_logits(clf) -> [M, C] scores the test
    set; called after every epoch when cfg.report needs it, else once at the end.
    Returns {"classifier", "epochs" (fractional with max_steps), "steps", "history"}."""
    from tqdm import tqdm
    torch.manual_seed(cfg.seed)
    clf = LinearClassifier(*stats, num_classes).to(device)
    if cfg.fc_init == "normal":                 # MoCo's and SogCLR's lincls: N(0, 0.01), bias 0
        nn.init.normal_(clf.fc.weight, std=0.01)
        nn.init.zeros_(clf.fc.bias)
    opt = probe_optimizer(clf, backbone, cfg)
    n, bs = len(index), cfg.batch_size
    if cfg.drop_last and n < bs:
        # fewer images than one batch: dropping the incomplete batch would leave nothing
        log.warning("the protocol's batch of %d is larger than the %d training images: each "
                    "epoch is one smaller batch of all of them", bs, n)
    steps_per_epoch = max(n // bs, 1) if cfg.drop_last else math.ceil(n / bs)
    total = cfg.epochs * steps_per_epoch
    last = total if cfg.max_steps is None else min(cfg.max_steps, total)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    d = cfg.dataset
    padding = max(1, round(4 * d.size / 32))            # 4 px at CIFAR's 32 px
    fill = -torch.tensor(d.mean) / torch.tensor(d.std)  # a black pixel, normalised
    every_epoch = cfg.report != "last"
    history, step = [], 0
    lrs = probe_lrs(cfg, steps_per_epoch)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g, device=device)
        backbone.train(cfg.finetune)            # frozen: eval mode (running BN statistics)
        bar = tqdm(range(steps_per_epoch), desc=f"linear epoch {epoch}", leave=False,
                   disable=not progress_enabled(cfg.progress), dynamic_ncols=True)
        loss_sum = torch.zeros((), device=device)
        for i in bar:
            sel = perm[i * bs:(i + 1) * bs]
            if cfg.train_augment == "cached":
                f = cached[sel]
            else:
                x = source.plain(index[sel])
                if cfg.train_augment == "crop_flip":
                    x = random_crop_flip(x, padding, fill, g)
                elif cfg.train_augment == "resized_crop_flip":
                    x = random_resized_crop_flip(x, cfg.crop_scale, g)
                with torch.set_grad_enabled(cfg.finetune):
                    f = backbone(x).float()
            loss = F.cross_entropy(clf(f), labels[sel])
            lr = lrs[step]
            for group in opt.param_groups:      # lr_scale: layer-wise decay's groups
                group["lr"] = lr * group.get("lr_scale", 1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(sel)
            step += 1
            if step % 20 == 0 or step == last:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.4g}")
            if step == last:
                break
        bar.close()
        seen = min((i + 1) * bs, n)
        row = {"epoch": epoch, "train_loss": loss_sum.item() / seen}
        if test_logits is not None and (every_epoch or step == last or epoch == cfg.epochs - 1):
            backbone.eval()
            with torch.no_grad():
                row["test_top1"] = _top1(test_logits(clf))
        history.append(row)
        if step == last:
            break
    backbone.eval()
    return {"classifier": clf, "epochs": step / steps_per_epoch, "steps": step, "history": history}


def _top1(logits_and_labels) -> float:
    logits, labels = logits_and_labels
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def reported_epoch(history: List[dict], report: str) -> dict:
    """The history row whose test top-1 the protocol reports: the last epoch, the best one,
    or the one with the lowest training loss (SimCLR-CIFAR10's 'Best Test Acc')."""
    scored = [r for r in history if "test_top1" in r]
    if report == "best":
        return max(scored, key=lambda r: r["test_top1"])
    if report == "lowest_train_loss":
        return min(scored, key=lambda r: r["train_loss"])
    return scored[-1]


def lbfgs_regression(train_f: torch.Tensor, train_t: torch.Tensor, reg_weight: float,
                     steps: int = 500):
    """The invariance reproduction's train_reg: a linear layer from the raw features to the
    targets, mean squared error + reg_weight ||W||^2, 500 calls of torch's default L-BFGS.
    Returns predict(features) -> [M, P]."""
    layer = nn.Linear(train_f.shape[1], train_t.shape[1]).to(train_f.device)
    opt = torch.optim.LBFGS(layer.parameters())

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(layer(train_f), train_t) + reg_weight * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(steps):
            opt.step(closure)
    return lambda f: layer(f).detach()


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
    """The declared ranges (sslcifar.ranges), then the rules across keys."""
    def require(ok, key, value, allowed):
        if not ok:
            raise UserError(f"{key}={value} is not allowed: {allowed}")
    check_ranges(cfg)
    require(not (cfg.inputs == "untransformed" and cfg.passes > 1), "passes", cfg.passes,
            "feature averaging needs transformed inputs: add inputs=transformed")
    require(not (cfg.finetune and cfg.recipe == "fast"), "finetune", True,
            "the fast recipe fits cached features: use recipe=standard to fine-tune")
    require(not (cfg.finetune and cfg.train_augment == "cached"), "finetune", True,
            "train_augment=cached fits features computed once: use train_augment=crop_flip")
    require(cfg.layer_decay == 1 or cfg.finetune, "layer_decay", cfg.layer_decay,
            "layer-wise lr decay is for fine-tuning: add finetune=true (or leave it 1)")
    require(not (cfg.schedule == "simclr_cifar10" and cfg.epochs > 1000), "epochs", cfg.epochs,
            "schedule=simclr_cifar10 is a cosine over SimCLR-CIFAR10's 1000 pretraining "
            "epochs: use at most 1000")
    pick_device(cfg.device)


def protocol_config(name: str, train_cfg):
    """The linear_eval config of protocol `name` for a pretraining run's data (eval.linear):
    composed from conf/ as `linear_eval.py protocol=<name>` would, with the run's dataset,
    device and seed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from .eval_config import register_eval_configs
    register_eval_configs()
    overrides = [f"protocol={name}", "progress=false", f"seed={train_cfg.seed}"]
    if GlobalHydra.instance().is_initialized():           # inside simclr.py / moco.py
        cfg = compose("linear_eval", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("linear_eval", overrides=overrides)
    cfg.dataset = OmegaConf.merge(cfg.dataset, OmegaConf.to_container(train_cfg.dataset, resolve=True))
    cfg.device = train_cfg.device
    return cfg


def run_dir_of(cfg) -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UserError("no run directory: launch through linear_eval.py")


def linear_eval(cfg, run_dir: Optional[Path] = None) -> dict:
    """`linear_eval.py`: the encoder of cfg.pretrained evaluated by cfg's protocol; writes
    linear_eval.json (and confusion_matrix.png) to the run directory."""
    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True          # fixed image size: pick the fastest kernels
    t0 = time.perf_counter()
    enc = load_encoder(cfg)
    log.info("encoder: %s", enc.describe)
    pretrained_on = (enc.config or {}).get("dataset", {})
    if enc.config is not None and pretrained_on.get("name") != cfg.dataset.name:
        log.warning("the encoder was pretrained on %s; evaluating on dataset=%s",
                    pretrained_on.get("name"), cfg.dataset.name)
    elif pretrained_on.get("root") and not _given("dataset.root") \
            and pretrained_on["root"] != cfg.dataset.root:
        # the same data set: read it where the pretraining run read it, unless told otherwise
        log.info("dataset.root=%s (the pretraining run's)", pretrained_on["root"])
        cfg.dataset.root = pretrained_on["root"]
    # transformed inputs and the invariance measure need sources that make views
    views = cfg.inputs == "transformed" or cfg.invariance_images > 0
    train_src = build_source(cfg, "train", device, augment=cfg.inputs == "transformed")
    test_src = build_source(cfg, "test", device, augment=views)
    result, classes = evaluate_encoder(enc.backbone.to(device), cfg, train_src, test_src, device)
    result = {"checkpoint": str(enc.path) if enc.path is not None else "random",
              "checkpoint_format": enc.format,
              "backbone": {"name": enc.name, "width": enc.width, "stem": enc.stem}, **result,
              "seconds": time.perf_counter() - t0, "code": code_version()}
    (run_dir / "linear_eval.json").write_text(json.dumps(result, indent=2))
    if result["task"] == "regression":
        line = f"linear_eval: r2={result['r2']:.4f} (ridge, {result['checkpoint']})"
    else:
        # our own two protocols are named by their recipe (recipe=fast is protocol=fast)
        name = cfg.recipe if cfg.protocol in ("standard", "fast") else cfg.protocol
        confusion_png(result["confusion_matrix"], classes, run_dir / "confusion_matrix.png",
                      f"{cfg.dataset.name} linear eval ({name}): top-1 {result['top1']:.2f}%")
        line = (f"linear_eval: top1={result['top1']:.2f} top5={result['top5']:.2f} "
                f"({name}, {result['checkpoint']})")
    print(line, flush=True)
    return result


def _given(key: str) -> bool:
    """Whether the command line set `key`."""
    from .resume import current_overrides
    return any(o.lstrip("+~").startswith(f"{key}=") for o in current_overrides())


def evaluate_encoder(backbone: nn.Module, cfg, train_src, test_src, device):
    """The protocol of cfg on an encoder (frozen unless cfg.finetune) and the two splits'
    sources. Returns (the result dict of linear_eval.json, the class names). The training
    loop calls this for eval.linear at the end of pretraining."""
    backbone.eval()
    before = None if cfg.finetune else snapshot(backbone)
    regression = train_src.task == "regression"
    train_index = torch.arange(len(train_src), device=device)
    if not regression:
        train_index = train_index[train_src.labels >= 0]        # STL-10's unlabeled part cannot train
        if len(train_index) == 0:
            raise UserError(f"dataset {cfg.dataset.name} split '{cfg.dataset.train_split}' has no "
                            f"labelled images. Fix: dataset.train_split=train")
    test_index = torch.arange(len(test_src), device=device)

    def features(src, index, desc):
        if cfg.inputs == "untransformed":
            return extract(backbone, src, index, cfg.batch_size,
                           progress=progress_enabled(cfg.progress), desc=desc)
        return averaged_features(backbone, src, index, cfg.batch_size, cfg.passes, cfg.seed)

    # the SGD recipe needs the un-augmented training features only to standardise
    needs_train_f = regression or cfg.recipe == "fast" or cfg.standardize or \
        cfg.train_augment == "cached"
    train_f = features(train_src, train_index, "train features") if needs_train_f else None
    test_f = features(test_src, test_index, "test features")
    result = {"protocol": cfg.protocol, "dataset": cfg.dataset.name, "num_train": len(train_index),
              "num_test": len(test_index), "seed": cfg.seed, "finetune": bool(cfg.finetune)}
    classes = []
    result.update(inputs=cfg.inputs, passes=cfg.passes if cfg.inputs == "transformed" else None)
    if regression:
        log.info("dataset=%s: %s regression of the generative parameters (recipe=%s does "
                 "not apply)", cfg.dataset.name, cfg.regression, cfg.recipe)
        targets = train_src.targets.float()
        predict = (ridge_regression(train_f, targets, cfg.ridge) if cfg.regression == "ridge"
                   else lbfgs_regression(train_f, targets, cfg.reg_weight, cfg.lbfgs_steps))
        pred, truth = predict(test_f), test_src.targets.float()
        r2 = r2_scores(pred, truth).tolist()
        mse = ((pred - truth) ** 2).mean(0).tolist()
        result.update(task="regression", recipe=cfg.regression, epochs=None, ridge=cfg.ridge,
                      r2=sum(r2) / len(r2), r2_per_parameter=dict(zip(SPIROGRAPH_PARAMS, r2)),
                      mse=sum(mse) / len(mse), mse_per_parameter=dict(zip(SPIROGRAPH_PARAMS, mse)))
    else:
        labels = train_src.labels[train_index]
        num_classes = cfg.dataset.num_classes or int(max(labels.max(), test_src.labels.max())) + 1
        if cfg.recipe == "fast":
            clf = fit_fast(train_f, labels, num_classes, cfg.l2, cfg.lbfgs_max_iter,
                           cfg.lbfgs_steps, cfg.lbfgs_line_search, cfg.standardize)
            result.update(epochs=None, l2=cfg.l2, lbfgs_steps=cfg.lbfgs_steps,
                          lbfgs_max_iter=cfg.lbfgs_max_iter, standardize=bool(cfg.standardize))
            reported = None
        else:
            stats = feature_stats(train_f) if cfg.standardize else _identity_stats(test_f)

            def test_logits(clf):
                f = features(test_src, test_index, "test features") if cfg.finetune else test_f
                return clf(f), test_src.labels

            fit = fit_sgd(backbone, train_src, train_index, labels, num_classes, stats, cfg,
                          device, test_logits, cached=train_f)
            clf = fit["classifier"]
            if cfg.finetune:                    # the encoder has changed: its final features
                test_f = features(test_src, test_index, "test features")
            reported = reported_epoch(fit["history"], cfg.report)
            result.update(epochs=fit["epochs"], steps=fit["steps"], lr=cfg.lr,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          batch_size=cfg.batch_size, schedule=cfg.schedule,
                          report=cfg.report, history=fit["history"])
        with torch.no_grad():
            logits = clf(test_f)
        classes = list(test_src.classes) or [str(i) for i in range(num_classes)]
        classes += [str(i) for i in range(len(classes), num_classes)]
        result.update(task="classification", recipe=cfg.recipe,
                      **classification_scores(logits, test_src.labels, classes))
        result["top1_last"] = result["top1"]
        if reported is not None:            # the protocol's number (best epoch, ...)
            scored = [r["test_top1"] for r in fit["history"] if "test_top1" in r]
            result.update(top1=reported["test_top1"], top1_epoch=reported["epoch"],
                          top1_best=max(scored))
    if cfg.invariance_images:
        from .invariance import measure_invariance
        result["invariance"] = measure_invariance(backbone, test_src, cfg.invariance_images,
                                                  cfg.invariance_samples, cfg.batch_size, cfg.seed)
    if before is not None:
        # the MoCo sanity check: a frozen encoder must come out exactly as it went in
        assert_unchanged(backbone, before)
    return result, classes


@torch.no_grad()
def averaged_features(backbone: nn.Module, source, index: torch.Tensor, batch_size: int,
                      passes: int, seed: int) -> torch.Tensor:
    """Features [N, F] averaged over `passes` augmented views of each image (the invariance
    reproduction's --num-passes feature averaging); BatchNorm in eval mode."""
    was_training = backbone.training
    backbone.eval()
    g = torch.Generator(device=source.device).manual_seed(seed)
    total = None
    for _ in range(passes):
        out = []
        for i in range(0, len(index), batch_size):
            views, *_ = source.views(index[i:i + batch_size], g)
            out.append(backbone(views[0]).float())
        f = torch.cat(out)
        total = f if total is None else total + f
    backbone.train(was_training)
    return total / passes
