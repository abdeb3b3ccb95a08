"""Figures: our exact t-SNE (perplexity calibration, cluster separation), the PNG
writers, and the `python -m sslcifar.figures` command line."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from sslcifar.errors import UserError
from sslcifar.figures import affinities, conditional_affinities, curves_png, tsne, tsne_png

from .conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_side=200):
    assert path.exists() and path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side


def clusters(n_per=60, k=5, dim=50, spread=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(k, dim, generator=g)
    y = torch.arange(n_per * k) % k
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def knn_accuracy(points, y, k=5):
    """Leave-one-out k-nearest-neighbour accuracy (majority vote) in `points`."""
    d = torch.cdist(points, points)
    d.fill_diagonal_(math.inf)
    votes = y[d.topk(k, largest=False).indices]
    return (votes.mode(1).values == y).float().mean().item()


def test_bandwidths_match_the_perplexity():
    x, _ = clusters(n_per=40, k=3)
    for perplexity in (5.0, 30.0):
        p = conditional_affinities(x, perplexity)
        torch.testing.assert_close(p.sum(1), torch.ones(len(x), dtype=p.dtype))
        assert p.diagonal().abs().max() == 0
        logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
        entropy = -(p * logp).sum(1)
        torch.testing.assert_close(entropy.exp(), torch.full_like(entropy, perplexity),
                                   atol=1e-3, rtol=1e-4)
    sym = affinities(x, 30.0)
    torch.testing.assert_close(sym, sym.T)
    assert abs(sym.sum().item() - 1) < 1e-6


def test_tsne_keeps_well_separated_clusters_separated():
    x, y = clusters()                                     # 5 Gaussian clusters in 50-D
    assert knn_accuracy(x, y) == 1.0
    emb = tsne(x, perplexity=30, iterations=500, seed=0)
    assert emb.shape == (len(x), 2) and torch.isfinite(emb).all()
    assert knn_accuracy(emb, y) >= 0.95
    # clusters are compact: mean distance to own centroid << distance between centroids
    cent = torch.stack([emb[y == c].mean(0) for c in range(5)])
    within = torch.stack([(emb[y == c] - cent[c]).norm(dim=1).mean() for c in range(5)]).mean()
    between = torch.pdist(cent).min()
    assert between > 2 * within


def test_tsne_of_structureless_data_is_not_separated():
    """The check above can fail: with labels unrelated to the data, kNN accuracy in the
    embedding stays near chance."""
    x, y = clusters()
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    assert knn_accuracy(tsne(x, iterations=300), y) < 0.5


def test_tsne_png_writes_valid_pngs(tmp_path):
    x, y = clusters(n_per=20, k=3)
    assert_png(tsne_png(x, y, tmp_path / "classes.png", classes=["a", "b", "c"], iterations=250))
    y_unlabeled = y.clone()
    y_unlabeled[:10] = -1
    assert_png(tsne_png(x, y_unlabeled, tmp_path / "unlabeled.png", iterations=250))
    assert_png(tsne_png(x, x[:, 0], tmp_path / "sub" / "continuous.png", iterations=250))
    with pytest.raises(ValueError, match="labels"):
        tsne_png(x, y[:5], tmp_path / "bad.png")


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                           + '{"epoch": 9, "lo')     # a line cut by a crash


def test_curves_png_from_metrics_jsonl(tmp_path):
    rows = [{"epoch": e, "step": 10 * (e + 1), "loss": 5 - e * 0.3, "lr": 0.1 * (1 - e / 6),
             "images_per_s": 100.0, "online_train_top1": 10.0 + 5 * e,
             **({"knn_top1": 20.0 + 4 * e} if e % 2 else {})} for e in range(6)]
    write_metrics(tmp_path / "run", rows)
    assert_png(curves_png(tmp_path / "run"))
    assert (tmp_path / "run" / "curves.png").exists()
    spiro = [{"epoch": e, "step": e + 1, "loss": 3.0 - e, "lr": 0.5, "knn_r2": 0.1 * e}
             for e in range(3)]
    write_metrics(tmp_path / "spiro", spiro)
    assert_png(curves_png(tmp_path / "spiro", tmp_path / "elsewhere.png"))
    with pytest.raises(UserError, match="no training metrics"):
        curves_png(tmp_path / "missing")


def test_curve_series_put_steps_and_epochs_on_one_axis(tmp_path):
    """Per-log-step loss and lr from steps.jsonl, the epochs' rows at their last step, the
    collapse monitor with 1/sqrt(D), the classifier's and the teacher temperature's panels."""
    from sslcifar.figures import curve_series
    run_dir = tmp_path / "run"
    rows = [{"epoch": e, "step": 4 * (e + 1), "loss": 2.0 - e, "lr": 0.1, "z_std": 0.05,
             "z_dim": 256, "train_top1": 40.0, "test_top1": 30.0 + e, "teacher_temp": 0.04}
            for e in range(2)]
    write_metrics(run_dir, rows)
    (run_dir / "steps.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3.0 - 0.1 * s, "lr": 0.01 * s}) + "\n" for s in range(1, 9)))
    data = curve_series(run_dir)
    assert data["training loss"]["per log step"] == (list(range(1, 9)), [3.0 - 0.1 * s for s in range(1, 9)])
    assert data["training loss"]["epoch mean"] == ([4, 8], [2.0, 1.0])
    assert data["learning rate"]["lr"][0] == list(range(1, 9))
    assert data["accuracy"]["classifier (test)"] == ([4, 8], [30.0, 31.0])
    assert data["collapse monitor"]["1/sqrt(D): spread outputs"][1] == [256 ** -0.5] * 2
    assert data["teacher temperature"]["teacher_temp"] == ([4, 8], [0.04, 0.04])
    assert "kNN regression" not in data
    assert_png(curves_png(run_dir))


def run_module(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "sslcifar.figures", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_figures_command_line(tmp_path):
    write_metrics(tmp_path / "run", [{"epoch": 0, "step": 1, "loss": 1.0, "lr": 0.1}])
    proc = run_module("curves", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"curves: {tmp_path / 'run' / 'curves.png'}"
    assert_png(tmp_path / "run" / "curves.png")

    proc = run_module("tsne", "pretrained=random", "backbone.width=4", "dataset=spirograph",
                      "dataset.num_train=60", "dataset.num_test=8", "split=train", "num_points=50",
                      "perplexity=10", "iterations=250", "device=cpu", "progress=false",
                      f"hydra.run.dir={tmp_path / 'tsne'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == \
        f"tsne: {tmp_path / 'tsne' / 'tsne.png'} (50 spirograph train images)"
    assert_png(tmp_path / "tsne" / "tsne.png")
    proc = run_module("tsne", "pretrained=random", "backbone.width=4", "dataset=spirograph",
                      "dataset.num_train=8", "dataset.num_test=30", "num_points=100",
                      "iterations=50", "device=cpu", f"out={tmp_path / 'mine.png'}",
                      f"hydra.run.dir={tmp_path / 'tsne2'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_png(tmp_path / "mine.png")
    assert not (tmp_path / "tsne2" / "tsne.png").exists()

    proc = run_module("curves", str(tmp_path / "nothing"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no training metrics in")
    proc = run_module("plot", cwd=tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr
