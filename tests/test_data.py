"""Data sets read from real files in their official layouts, and the batch order."""
import io
import logging
import pickle
import tarfile

import numpy as np
import pytest
import torch

from sslcifar.data.datasets import load_cifar, load_imagefolder, load_stl10
from sslcifar.data.loader import DeviceBatches, TorchvisionBatches, epoch_order
from sslcifar.data.views import view_specs
from sslcifar.data.sources import ImageSource, SpirographSource
from sslcifar.data.augment import BatchNormalize, ViewMaker
from sslcifar.errors import UserError

from .conftest import SHARED_DATA
from .test_config import compose_cfg


def test_cifar_python_layout_loads_with_a_checksum_warning_said_once_per_folder(
        cifar_root, tmp_path, caplog):
    """A re-encoded copy: one warning the first time the folder is read (its train and test
    splits together), none after (remembered in <folder>/.sslcifar-checksums)."""
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(cifar_root, root)
    (root / "cifar-10-batches-py" / ".sslcifar-checksums").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        load_cifar("cifar10", str(root), "train", download=False)
        load_cifar("cifar10", str(root), "test", download=False)
    assert caplog.text.count("differ from the official checksums") == 1
    assert (root / "cifar-10-batches-py" / ".sslcifar-checksums").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train = load_cifar("cifar10", str(root), "train", download=False)
    assert "differ from the official checksums" not in caplog.text
    assert train.images.shape == (1000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.min() == 0 and train.labels.max() == 9 and len(train.classes) == 10
    test = load_cifar("cifar10", str(cifar_root), "test", download=False)
    assert len(test) == 500
    # pixels are the layout's channel planes: row 0 of data = R plane of image 0
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)["data"][0]
    assert torch.equal(train.images[0].flatten(), torch.from_numpy(raw))


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for split, n in (("train", 20), ("test", 10)):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": list(range(n)), "coarse_labels": [0] * n}, f)
    d = load_cifar("cifar100", str(tmp_path), "train", download=False)
    assert d.labels.tolist() == list(range(20)) and d.images.shape == (20, 3, 32, 32)


def test_stl10_binary_layout_is_column_major(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (3, 3, 96, 96), dtype=np.uint8)        # N, C, H, W
    img.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")         # stored column-major
    np.array([1, 2, 10], dtype=np.uint8).tofile(folder / "train_y.bin")
    img[:2].transpose(0, 1, 3, 2).tofile(folder / "unlabeled_X.bin")
    d = load_stl10(str(tmp_path), "train+unlabeled", download=False)
    assert torch.equal(d.images[:3], torch.from_numpy(img))
    assert d.labels.tolist() == [0, 1, 9, -1, -1]


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").exists(), reason="no shared data")
def test_imagefolder_of_real_jpegs(tmp_path):
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        n = {"cat": 0, "dog": 0}
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "train" and parts[1] in n \
                    and n[parts[1]] < 5:
                (tmp_path / "train" / parts[1]).mkdir(parents=True, exist_ok=True)
                (tmp_path / "train" / parts[1] / parts[2]).write_bytes(tar.extractfile(m).read())
                n[parts[1]] += 1
            if min(n.values()) >= 5:
                break
    d = load_imagefolder(str(tmp_path), "train", size=24)
    assert d.images.shape == (10, 3, 24, 24) and d.classes == ["cat", "dog"]
    assert d.labels.tolist() == [0] * 5 + [1] * 5
    assert d.images.float().std() > 10                       # real pictures, not blank
    with pytest.raises(UserError, match="no images found"):
        (tmp_path / "empty" / "x").mkdir(parents=True)
        load_imagefolder(str(tmp_path / "empty"), "train", size=24)


def test_epoch_order_is_a_permutation_that_changes_per_epoch():
    a = epoch_order(50, 8, seed=0, epoch=0)
    b = epoch_order(50, 8, seed=0, epoch=1)
    assert a.shape == (6, 8) and len(set(a.flatten().tolist())) == 48
    assert not torch.equal(a, b)
    assert torch.equal(a, epoch_order(50, 8, seed=0, epoch=0))


def test_device_batches_resume_at_any_step_and_split_over_ranks():
    src = SpirographSource(64, seed=0, device=torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3)
    whole = list(DeviceBatches(src, 16, seed=3, rank=0, world=1).epoch(2))
    later = list(DeviceBatches(src, 16, seed=3, rank=0, world=1).epoch(2, start_step=2))
    assert len(whole) == 4 and len(later) == 2
    for b1, b2 in zip(whole[2:], later):
        assert torch.equal(b1.index, b2.index) and all(torch.equal(a, b) for a, b in zip(b1.views, b2.views))
        assert all(torch.equal(p1["nuisance"], p2["nuisance"]) for p1, p2 in zip(b1.params, b2.params))
    r0 = list(DeviceBatches(src, 16, seed=3, rank=0, world=2).epoch(2))
    r1 = list(DeviceBatches(src, 16, seed=3, rank=1, world=2).epoch(2))
    for w, a, b in zip(whole, r0, r1):
        assert torch.equal(torch.cat([a.index, b.index]), w.index)   # 2 ranks x 8 = 1 x 16, same images


def test_torchvision_pipeline_sees_the_same_batches(cifar_root):
    cfg = compose_cfg(overrides=[f"dataset.root={cifar_root}"])
    data = load_cifar("cifar10", str(cifar_root), "train", download=False).first(64)
    d = cfg.dataset
    specs = view_specs(cfg.augment, d)
    src = ImageSource(data, torch.device("cpu"), ViewMaker(specs, d.mean, d.std),
                      BatchNormalize(32, d.mean, d.std))
    tv = list(TorchvisionBatches(src, specs, d.mean, d.std, 16, seed=0, rank=0, world=1,
                                 num_workers=0, device=torch.device("cpu")).epoch(0))
    dev = list(DeviceBatches(src, 16, seed=0, rank=0, world=1).epoch(0))
    assert len(tv) == len(dev) == 4
    for a, b in zip(tv, dev):
        assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
        assert len(a.views) == 2 and a.views[0].shape == (16, 3, 32, 32)
        assert not torch.equal(a.views[0], a.views[1])
    again = list(TorchvisionBatches(src, specs, d.mean, d.std, 16, seed=0, rank=0, world=1,
                                    num_workers=2, device=torch.device("cpu")).epoch(0))
    assert all(torch.equal(a.views[0], b.views[0]) for a, b in zip(tv, again))   # seeded per image


def test_images_kept_in_host_memory_give_the_same_batches(cifar_root):
    """dataset.placement=host (the fallback for data sets too big for the GPU) gathers each
    batch from host memory with the loop's host-side indices: same images, same views."""
    cfg = compose_cfg(overrides=[f"dataset.root={cifar_root}"])
    d = cfg.dataset
    data = load_cifar("cifar10", str(cifar_root), "train", download=False).first(64)
    views = ViewMaker(view_specs(cfg.augment, d), d.mean, d.std)
    make = lambda placement: ImageSource(data, torch.device("cpu"), views,  # noqa: E731
                                         BatchNormalize(32, d.mean, d.std), placement)
    on_device, on_host = make("device"), make("host")
    assert on_host.on_host and not on_device.on_host
    a = list(DeviceBatches(on_device, 16, seed=5, rank=1, world=2).epoch(1))
    b = list(DeviceBatches(on_host, 16, seed=5, rank=1, world=2).epoch(1))
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index) and torch.equal(x.labels, y.labels)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))
    index = torch.tensor([3, 60, 0, 17])
    assert torch.equal(on_host.plain(index), on_device.plain(index))
    assert torch.equal(on_host._gather(index), data.images[index])


def _png_folder(folder, classes=("a", "b"), n=2):
    from PIL import Image
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_imagefolder_without_a_test_folder(tmp_path, caplog):
    """root/<class>/...: the test split is the training images, said in a warning;
    root/train/<class>/... without root/test/: an error, not a one-class 'train' set."""
    _png_folder(tmp_path / "flat")
    with caplog.at_level(logging.WARNING):
        d = load_imagefolder(str(tmp_path / "flat"), "test", size=8)
    assert d.classes == ["a", "b"] and len(d) == 4
    assert "has no test/ folder" in caplog.text
    _png_folder(tmp_path / "split" / "train")
    assert len(load_imagefolder(str(tmp_path / "split"), "train", size=8)) == 4
    with pytest.raises(UserError, match="has a train/ folder but no test/ folder"):
        load_imagefolder(str(tmp_path / "split"), "test", size=8)


def test_a_stratified_subset_has_the_same_number_of_images_per_class(cifar_root):
    data = load_cifar("cifar10", str(cifar_root), "train", download=False)
    sub = data.stratified(53)                                # 5 per class, 3 classes get 6
    counts = torch.bincount(sub.labels, minlength=10)
    assert len(sub) == 53 and counts.tolist() == [6, 6, 6] + [5] * 7
    first = {c: (data.labels == c).nonzero()[:counts[c]].squeeze(1) for c in range(10)}
    expected = torch.cat(list(first.values())).sort().values     # each class's first images, in order
    assert torch.equal(sub.images, data.images[expected])
    from sslcifar.errors import UserError
    with pytest.raises(UserError, match="subset_mode=stratified needs"):
        data.first(30).stratified(29)
