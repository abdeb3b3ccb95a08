"""Figures: t-SNE of an encoder's embeddings, and a run's training curves.

    python -m sslcifar.figures tsne pretrained=outputs/simclr/<date>_<time>   # -> outputs/tsne/<...>/tsne.png
    python -m sslcifar.figures tsne pretrained=PATH dataset=spirograph        # coloured by m
    python -m sslcifar.figures curves outputs/simclr/<date>_<time>            # -> <run dir>/curves.png

`tsne` is an exact t-SNE (van der Maaten & Hinton, 2008) in plain torch, for
up to a few thousand points: Gaussian affinities whose bandwidths are found by
bisection to match the perplexity, early exaggeration, then gradient descent
with momentum and per-coordinate gains. No scikit-learn needed.

The training loop can call `tsne_png(features, labels, path, classes)` and
`curves_png(run_dir)` directly.
"""
import logging
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..errors import UserError

log = logging.getLogger("sslcifar")


# ---------------------------------------------------------------------- t-SNE

def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    """[N, N] squared Euclidean distances of the rows of x [N, D]."""
    sq = (x * x).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)


def conditional_affinities(x: torch.Tensor, perplexity: float, tol: float = 1e-5,
                           max_steps: int = 200) -> torch.Tensor:
    """P_j|i [N, N] (float64, rows sum to 1, zero diagonal) for the rows of x [N, D].

    Row i is a Gaussian around x_i, exp(-beta_i d_ij^2), whose precision beta_i is
    found by bisection (all rows at once) so that the row's entropy is
    log(perplexity) nats: each point has about `perplexity` effective neighbours.
    """
    n = x.shape[0]
    d2 = _squared_distances(x.double())
    d2 = d2 / d2[d2 > 0].mean().clamp_min(1e-12)       # scale-free: beta starts near 1
    d2.fill_diagonal_(math.inf)                         # a point is not its own neighbour
    target = math.log(perplexity)
    beta = torch.ones(n, 1, dtype=d2.dtype, device=d2.device)
    lo = torch.zeros_like(beta)
    hi = torch.full_like(beta, math.inf)
    for _ in range(max_steps):
        logp = torch.log_softmax(-beta * d2, dim=1)                    # [N, N]
        p = logp.exp()
        entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(1, keepdim=True)
        if (entropy - target).abs().max() < tol:
            break
        too_flat = entropy > target                     # too wide a Gaussian: raise beta
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(too_flat, torch.where(hi.isinf(), beta * 2, (beta + hi) / 2),
                           (beta + lo) / 2)
    return p


def affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric t-SNE input affinities P = (P_j|i + P_i|j) / 2N [N, N]: sum 1, zero diagonal."""
    p = conditional_affinities(x, perplexity)
    p = (p + p.T) / (2 * p.shape[0])
    return p.clamp_min(1e-12).fill_diagonal_(0)


def tsne(x: torch.Tensor, perplexity: float = 30.0, iterations: int = 1000,
         early_exaggeration: float = 12.0, exaggeration_iters: int = 250,
         learning_rate: Optional[float] = None, seed: int = 0) -> torch.Tensor:
    """2-D embedding [N, 2] of the rows of x [N, D] (exact: O(N^2) memory and time).

    Args:
        perplexity: effective number of neighbours (clamped to (N - 1) / 3).
        early_exaggeration: P is multiplied by it for the first `exaggeration_iters`
            iterations, which lets clusters form before they spread out.
        learning_rate: default max(N / early_exaggeration / 4, 50) (Belkina et al., 2019).
    """
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    p = affinities(x, perplexity).float()                              # [N, N]
    lr = learning_rate or max(n / early_exaggeration / 4, 50.0)
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = (1e-4 * torch.randn(n, 2, generator=g)).to(p.device)           # [N, 2]
    velocity = torch.zeros_like(y)
    gains = torch.ones_like(y)
    for it in range(iterations):
        early = it < exaggeration_iters
        exaggeration = early_exaggeration if early else 1.0
        momentum = 0.5 if early else 0.8
        # Student-t output affinities: num_ij = 1 / (1 + |y_i - y_j|^2), Q = num / sum(num)
        num = 1.0 / (1.0 + _squared_distances(y))
        num.fill_diagonal_(0)
        q = num / num.sum()
        # dC/dy_i = 4 sum_j (p_ij - q_ij) num_ij (y_i - y_j)
        w = (exaggeration * p - q) * num                               # [N, N]
        grad = 4 * (w.sum(1, keepdim=True) * y - w @ y)                # [N, 2]
        # delta-bar-delta gains: grow where the gradient turned against the last step
        gains = torch.where((grad > 0) != (velocity > 0), gains + 0.2, gains * 0.8).clamp_min(0.01)
        velocity = momentum * velocity - lr * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y


# ---------------------------------------------------------------------- figures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def tsne_png(features: torch.Tensor, labels: torch.Tensor, path, classes: Optional[Sequence[str]] = None,
             title: str = "", perplexity: float = 30.0, iterations: int = 1000,
             seed: int = 0) -> Path:
    """t-SNE of features [N, F] as a scatter plot saved to `path` (PNG).

    labels [N]: integer classes (one colour each, named by `classes`; -1 grey) or
    floats (a continuous colour scale, e.g. a Spirograph parameter). Every point is
    embedded: callers choose how many (exact t-SNE is quadratic). perplexity 30 and 1000
    iterations: van der Maaten's defaults, as conf/tsne.yaml (a test holds them equal).
    """
    features = features.detach().float().cpu()
    labels = labels.detach().cpu()
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
    y = tsne(features, perplexity, iterations, seed=seed).numpy()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    if labels.is_floating_point():
        sc = ax.scatter(y[:, 0], y[:, 1], c=labels.numpy(), s=6, cmap="viridis")
        fig.colorbar(sc, ax=ax, fraction=0.046)
    else:
        ids = sorted(int(c) for c in labels.unique())
        cmap = plt.get_cmap("tab10" if len(ids) <= 10 else "tab20" if len(ids) <= 20 else "hsv")
        for i, c in enumerate(ids):
            sel = (labels == c).numpy()
            name = "unlabeled" if c < 0 else (classes[c] if classes and c < len(classes) else str(c))
            color = "lightgrey" if c < 0 else cmap(i % cmap.N if len(ids) <= 20 else i / len(ids))
            ax.scatter(y[sel, 0], y[sel, 1], s=6, color=color, label=name)
        if len(ids) <= 20:
            ax.legend(markerscale=3, fontsize=8, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(y)} embeddings (perplexity {perplexity:g})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# the panels of curves.png: (title, y label, [(key in the logs, line label), ...]); every
# panel on the same step axis; a panel appears when a run has one of its keys
PANELS = (
    ("training loss", "loss", [("loss", "per log step"), ("epoch:loss", "epoch mean")]),
    ("learning rate", "lr", [("lr", "")]),
    ("accuracy", "top-1 (%)", [("knn_top1", "kNN (test)"), ("online_test_top1", "online probe (test)"),
                               ("online_train_top1", "online probe (training batches)"),
                               ("test_top1", "classifier (test)"), ("linear_top1", "linear eval")]),
    ("kNN regression", "R^2", [("knn_r2", "kNN (test)"), ("linear_r2", "linear eval")]),
    ("collapse monitor", "z_std", [("z_std", "z_std"), ("z_ref", "1/sqrt(D): spread outputs")]),
    ("teacher temperature", "T", [("teacher_temp", "")]),
)


def curve_series(run_dir) -> Dict[str, Dict[str, Tuple[list, list]]]:
    """The data of curves.png: {panel title: {line label: (steps, values)}}. The loss and lr
    of every log step come from steps.jsonl, the per-epoch metrics from metrics.jsonl, all
    against the optimizer step (an epoch's row at its last step)."""
    from ..metrics import read_metrics
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = read_metrics(run_dir / "steps.jsonl")
    if not rows and not steps:
        raise UserError(f"no training metrics in {run_dir / 'metrics.jsonl'}. Fix: give the run "
                        f"directory of a pretraining run (outputs/<config>/<date>_<time>)")

    def series(source, key):
        pts = [(r["step"], r[key]) for r in source if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]
    derived = [dict(r, **{"epoch:loss": r.get("loss"),
                          "z_ref": r["z_dim"] ** -0.5 if r.get("z_dim") else None}) for r in rows]
    out = {}
    for title, _, lines in PANELS:
        panel = {}
        for key, label in lines:
            source = steps if key in ("loss", "lr") and steps else derived
            xs, ys = series(source, key)
            if xs:
                panel[label or key] = (xs, ys)
        if panel:
            out[title] = panel
    return out


def curves_png(run_dir, path=None) -> Path:
    """Training curves of a run as one PNG (default <run_dir>/curves.png): the loss and lr
    of every log step, accuracies (kNN, online probe on test and training batches, the
    supervised classifier, linear eval), kNN R^2, the collapse monitor z_std with its
    1/sqrt(D) reference and a teacher temperature, each where the run has it, all against
    the optimizer step."""
    data = curve_series(run_dir)
    ylabels = {title: ylabel for title, ylabel, _ in PANELS}
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    cols = min(3, len(data))
    rows = -(-len(data) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, data.items()):
        for label, (xs, ys) in lines.items():
            ref = label.startswith("1/sqrt")
            ax.plot(xs, ys, label=label, linestyle="--" if ref else "-",
                    marker="o" if len(xs) <= 12 and not ref else None, markersize=3,
                    color="grey" if ref else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabels[title])
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
        if len(lines) > 1:
            ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    fig.suptitle(str(run_dir), fontsize=9)
    fig.tight_layout()
    path = Path(path) if path is not None else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- the command's work

def tsne_from_config(cfg, run_dir: Path) -> Path:
    """The `tsne` command: embed the first cfg.num_points images of cfg.split."""
    from ..data.sources import build_source
    from ..distributed import pick_device
    from ..features import extract
    from ..pretrained import load_encoder
    from ..ranges import check_ranges
    check_ranges(cfg)
    device = pick_device(cfg.device)
    enc = load_encoder(cfg)
    src = build_source(cfg, cfg.split, device)
    n = min(cfg.num_points, len(src))
    features = extract(enc.backbone.to(device), src, batch_size=cfg.batch_size, normalize=True, limit=n)
    if src.task == "regression":
        labels, what = src.targets[:n, 0].float(), "coloured by m"
    else:
        labels, what = src.labels[:n], "coloured by class"
    out = Path(cfg.out) if cfg.out else run_dir / "tsne.png"
    source = "random init" if enc.path is None else enc.path.parent.parent.name
    tsne_png(features, labels, out, list(src.classes), perplexity=cfg.perplexity,
             iterations=cfg.iterations, seed=cfg.seed,
             title=f"t-SNE, {cfg.dataset.name} {cfg.split} ({n} images, {what})\n{source}")
    print(f"tsne: {out} ({n} {cfg.dataset.name} {cfg.split} images)", flush=True)
    return out
