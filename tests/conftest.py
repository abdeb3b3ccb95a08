"""Shared fixtures: the repository root, running the real entrypoints in a
subprocess, and a small real CIFAR-10 folder in the official python layout.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# the workplace's real CIFAR-10 copy sits beside the clone (CI) or is named by the env
SHARED_DATA = Path(os.environ.get("SSLCIFAR_SHARED_DATA", REPO.parent / "shared" / "data"))
HAS_REAL_CIFAR = (SHARED_DATA / "cifar10-jpeg.tar.gz").exists()
needs_real_cifar = pytest.mark.skipif(
    not HAS_REAL_CIFAR, reason=f"needs real CIFAR-10 pixels ({SHARED_DATA}/cifar10-jpeg.tar.gz, "
    "or set SSLCIFAR_SHARED_DATA): on synthetic noise nothing can be learnt")

# the smallest settings that still exercise everything: narrow ResNet, few images
TINY = ["backbone.width=8", "batch_size=16", "epochs=1", "progress=false",
        "tensorboard=false", "device=cpu", "eval.knn_k=5"]

# The one table of per-method overrides that a tiny run (TINY, batch 16) needs, or that
# makes it exercise the method's own machinery within a few steps. Every test that runs
# each registered method (tests/test_every_method.py) and bench/fingerprint.py apply it;
# a method that needs nothing has no entry.
METHOD_OVERRIDES = {
    # a queue that fits a batch of 16; BatchNorm split in 2 groups of 8
    "moco": ["method.queue_size=64", "method.bn_splits=2"],
    "densecl": ["method.queue_size=64", "method.bn_splits=2"],
    # the queue is filled from step 0 and used from step 2 (a resume at step 3 needs it)
    "swav": ["method.queue_size=32", "method.queue_start_epoch=0"],
    # multi-crop, and the last layer frozen for the first half epoch
    "dino": ["augment.small_crops=2", "method.freeze_last_layer_epochs=0.5"],
    # 5 draws instead of 100, and the penalty below its clamp (so its gradient counts)
    "invclr": ["method.gp_samples=5", "method.gp_upper_limit=1000"],
    # SimCLR's lr (0.3 x 16/256) makes the 2048-wide VICReg loss diverge within 20 steps
    "vicreg": ["optimizer.lr=0.1"],
    # a support set that wraps around within the resume test's 8 steps of 16
    "nnclr": ["method.queue_size=40"], "nnbyol": ["method.queue_size=40"],
    "nnsiam": ["method.queue_size=40"], "ressl": ["method.queue_size=40"],
    # whitening sub-batches of 4 in 2 dimensions, 2 partitions per step: the 2-process
    # test's batch of 8 is cut in 2, the tiny runs' 16 in 4
    "wmse": ["method.proj_out_dim=2", "loss.w_size=4", "loss.w_iter=2"],
    "all4one": ["method.queue_size=40", "method.proj_out_dim=32", "method.transformer_heads=4"],
    # k-means from step 0 (a random initial bank), 2 small prototype sets that fit a bank of
    # 16 images, a narrow head: the resume test clusters at steps 0 and 4 (epoch 1)
    "deepclusterv2": ["method.bank_init=random", "method.num_prototypes=[4,3]",
                      "method.proj_hidden_dim=64", "method.proj_out_dim=16"],
    # 3 views instead of 8 (4 for FastSiam, its own number, stays)
    "mmcr": ["augment.groups.0.count=3"],
    # 2 local crops instead of 6 and 64 slices instead of 1024: the same code, less of it
    "lejepa": ["augment.small_crops=2", "loss.num_slices=64"],
    # 4 groups, a bank of 40 that wraps, k-means and momentum resets every 3 steps (the
    # resume test stops at step 3, a reset), narrow heads
    # 3 patches instead of 20, a narrow projector (4096 x 4096 by default)
    "emp_ssl": ["augment.groups.0.count=3", "method.proj_hidden_dim=64", "method.proj_out_dim=16"],
    # narrow heads (2048 and 512 wide by default), and 2 local crops: maps of two sizes
    "vicregl": ["optimizer.lr=0.1", "method.proj_hidden_dim=256", "method.proj_out_dim=256",
                "method.maps_hidden_dim=64", "method.maps_out_dim=64", "augment.small_crops=2"],
    # a 2-block ViT of width 32 (MAE's backbone) and a 1-block decoder of width 32
    "mae": ["backbone.width=32", "backbone.kwargs.depth=2", "backbone.kwargs.num_heads=2",
            "method.decoder_embed_dim=32", "method.decoder_depth=1", "method.decoder_num_heads=2"],
    "smog": ["method.num_groups=4", "method.queue_size=40", "method.reset_every=3",
             "method.proj_hidden_dim=64", "method.pred_hidden_dim=64"],
}


# Each backbone beyond the ResNets at a tiny size (tests/test_backbones.py); "METHOD@NAME"
# in test_every_method's helpers adds these overrides to METHOD's
TINY_BACKBONES = {
    "wide_resnet28w2": ["backbone=wide_resnet28w2", "backbone.width=4"],
    "vit_tiny": ["backbone=vit_tiny", "backbone.width=32", "backbone.kwargs.depth=2",
                 "backbone.kwargs.num_heads=2"],
    "swin_tiny": ["backbone=swin_tiny", "backbone.width=16", "backbone.kwargs.depths=[1,1,1,1]",
                  "backbone.kwargs.num_heads=[1,1,2,2]"],
    "convnext_tiny": ["backbone=convnext_tiny", "backbone.width=8",
                      "backbone.kwargs.depths=[1,1,1,1]"],
    "timm": ["backbone=timm", "backbone.timm_name=test_resnet"],
}


def run(script: str, *overrides: str, cwd=None, timeout: float = 300, env=None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a top-level script (simclr.py, moco.py, linear_eval.py), or a module given as
    "-m sslcifar.knn", as a user would."""
    e = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    e.pop("SLURM_RESTART_COUNT", None)
    e.update(env or {})
    target = ["-m", script[3:]] if script.startswith("-m ") else [str(REPO / script)]
    args = [sys.executable, *target, *overrides]
    proc = subprocess.run(args, cwd=cwd or REPO, env=e, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def write_cifar_layout(out: Path, images: np.ndarray, labels: np.ndarray,
                       test_images: np.ndarray, test_labels: np.ndarray) -> Path:
    """Write the official CIFAR-10 python layout (5 train batches + test batch)."""
    folder = out / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(images)), 5)
    for i, idx in enumerate(parts):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": images[idx].reshape(len(idx), -1), "labels": labels[idx].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": test_images.reshape(len(test_images), -1),
                     "labels": test_labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, f)
    return out


def _real_cifar_subset(n_train: int, n_test: int):
    """The first images of each split of ../shared/data's real CIFAR-10 JPEGs."""
    import io
    import tarfile
    from PIL import Image
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck"]
    want = {"train": n_train // 10, "test": n_test // 10}
    got = {(s, c): [] for s in want for c in classes}
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] not in want:
                continue
            bucket = got[(parts[0], parts[1])]
            if len(bucket) < want[parts[0]]:
                img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                bucket.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
            if all(len(v) >= want[s] for (s, _), v in got.items()):
                break
    out = {}
    rng = np.random.RandomState(0)
    for s in want:
        x = np.stack([im for c in classes for im in got[(s, c)]])
        y = np.array([i for i, c in enumerate(classes) for _ in got[(s, c)]])
        order = rng.permutation(len(y))                    # classes mixed, as the real batches
        out[s] = (x[order], y[order])
    return out


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A CIFAR-10 folder (official python layout) with 1000 train / 500 test real images
    from ../shared/data; synthetic images only where that archive is absent."""
    out = tmp_path_factory.mktemp("cifar")
    if (SHARED_DATA / "cifar10-jpeg.tar.gz").exists():
        d = _real_cifar_subset(1000, 500)
        return write_cifar_layout(out, *d["train"], *d["test"])
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (1000, 3, 32, 32), dtype=np.uint8)
    xt = rng.randint(0, 256, (500, 3, 32, 32), dtype=np.uint8)
    return write_cifar_layout(out, x, rng.randint(0, 10, 1000), xt, rng.randint(0, 10, 500))


# ---------------------------------------------------------------------- every registered method

def registered_methods():
    """The method names of the registry: what every per-method test runs over."""
    from sslcifar.methods import METHODS
    return sorted(METHODS)


def method_overrides(name: str):
    """`method=NAME` and its tiny overrides (METHOD_OVERRIDES); "METHOD@BACKBONE" adds the
    backbone's (TINY_BACKBONES)."""
    method, _, backbone = name.partition("@")
    return [f"method={method}", *METHOD_OVERRIDES.get(method, []),
            *(TINY_BACKBONES[backbone] if backbone else [])]


def synthetic_views(cfg, b: int, generator, dtype=None, noise: float = None):
    """Views [b, 3, S, S] of the sizes cfg's view groups give (multi-crop included), as a
    pipeline would hand them to the method; with `noise`, every view is the first one plus
    that much noise (views of the same images)."""
    import torch
    from sslcifar.data.views import view_sizes, view_specs
    sizes = view_sizes(view_specs(cfg.augment, cfg.dataset))
    views = [torch.randn(b, 3, s, s, generator=generator, dtype=dtype) for s in sizes]
    if noise is not None:
        first = views[0]
        views = [torch.nn.functional.interpolate(first, size=v.shape[-1], mode="bilinear",
                                                 align_corners=False) + noise * v for v in views]
    return views


def method_schedules(method, cfg, total_steps: int, steps_per_epoch: int):
    """The method's per-step values as the loop computes them (no lr: the test's own
    optimizer keeps its lr)."""
    from sslcifar.schedule import Schedules
    return Schedules(method.schedules(cfg, total_steps, steps_per_epoch), steps_per_epoch)
