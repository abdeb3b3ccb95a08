"""Load a data set split into memory as one uint8 tensor.

Every image data set becomes an `ImageSet`: images [N, 3, S, S] uint8 and
labels [N] int64 (-1 where a split has none, e.g. STL-10's unlabeled part).
CIFAR and STL-10 are read from their official binary layouts directly, so a
folder whose files differ from the official checksums (a re-encoded copy)
still loads, with a warning. ImageFolder trees are decoded once with PIL.
"""
import hashlib
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    images: torch.Tensor                 # [N, 3, S, S] uint8
    labels: torch.Tensor                 # [N] int64, -1 = unlabeled
    classes: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def first(self, n: int) -> "ImageSet":
        return ImageSet(self.images[:n], self.labels[:n], self.classes)

    def stratified(self, n: int) -> "ImageSet":
        """n images with the same number per class (the first ones of each class, in the
        data set's order; the n mod C left over go one each to the first classes): the
        invariance-by-gradient reproduction's --proportion, for label-efficiency runs."""
        index = stratified_index(self.labels, n)
        return ImageSet(self.images[index], self.labels[index], self.classes)


def stratified_index(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of n images, the same number per class (the first ones of each class;
    the n mod C left over one each to the first classes)."""
    classes = torch.unique(labels[labels >= 0])
    per, extra = divmod(n, len(classes))
    keep = []
    for i, c in enumerate(classes.tolist()):
        idx = (labels == c).nonzero().squeeze(1)
        want = per + (1 if i < extra else 0)
        if len(idx) < want:
            raise UserError(f"dataset.subset={n} with subset_mode=stratified needs {want} "
                            f"images of class {c}, the split has {len(idx)}. Fix: a smaller "
                            f"dataset.subset")
        keep.append(idx[:want])
    return torch.cat(keep).sort().values


# Official file names and md5 sums (as listed by torchvision) for the checksum warning.
_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", url_name="CIFAR10", label_key="labels",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta=("batches.meta", "label_names"),
                    md5={"data_batch_1": "c99cafc152244af753f735de768cd75f",
                         "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                         "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                         "data_batch_4": "634d18415352ddfa80567beed471001a",
                         "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                         "test_batch": "40351d587109b95175f43aff81a1287e"}),
    "cifar100": dict(folder="cifar-100-python", url_name="CIFAR100", label_key="fine_labels",
                     train=["train"], test=["test"], meta=("meta", "fine_label_names"),
                     md5={"train": "16019d7e3df5f24257cddd939b257f8d",
                          "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}),
}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_hint(name: str, root: Path, looked_for: Path) -> str:
    return (f"{name} not found: no {looked_for}. Fix: add dataset.download=true, or point "
            f"dataset.root (or $SSLCIFAR_DATA) at the folder that holds it (was {root}); "
            f"offline, `python ../shared/data/make_cifar10.py DIR` writes CIFAR-10's layout")


CHECKSUMS = ".sslcifar-checksums"


def _unofficial(folder: Path, files, official: dict) -> list:
    """The files that differ from the official checksums (a re-encoded copy), said once
    per data folder: each file's md5 is remembered in <folder>/.sslcifar-checksums by its
    size and time, with the files already warned about (where the folder is read-only,
    every run computes and warns again)."""
    import json
    marker = folder / CHECKSUMS
    try:
        seen = json.loads(marker.read_text())
    except (OSError, ValueError):
        seen = {}
    bad = []
    for f in files:
        st = (folder / f).stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = seen.get(f)
        md5 = entry["md5"] if entry and entry.get("stamp") == stamp else _md5(folder / f)
        seen[f] = {"stamp": stamp, "md5": md5}
        if md5 != official[f]:
            bad.append(f)
    warned = set(seen.get("warned", []))
    if bad and not warned:
        log.warning("%s: %s differ from the official checksums (a re-encoded copy?); loading "
                    "them anyway (said once for this folder; its other splits too)", folder,
                    ", ".join(bad))
    seen["warned"] = sorted(warned | set(bad))
    try:
        marker.write_text(json.dumps(seen))
    except OSError:
        pass
    return bad


def load_cifar(name: str, root: str, split: str, download: bool) -> ImageSet:
    spec = _CIFAR[name]
    root_p = Path(root).expanduser()
    folder = root_p / spec["folder"]
    files = spec["train"] if split == "train" else spec["test"]
    if not (folder / files[0]).exists():
        if not download:
            raise UserError(_download_hint(name.upper(), root_p, folder / files[0]))
        import torchvision
        getattr(torchvision.datasets, spec["url_name"])(str(root_p), train=split == "train",
                                                        download=True)
    bad = _unofficial(folder, files, spec["md5"])
    images, labels = [], []
    for f in files:
        try:
            with open(folder / f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")   # trusted layout: the official format is a pickle
        except Exception as e:
            raise UserError(f"{folder / f} is not a readable {name} batch file ({e}). "
                            f"Fix: re-create the folder (dataset.download=true or make_cifar10.py)")
        images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[spec["label_key"]])
    classes = []
    meta = folder / spec["meta"][0]
    if meta.exists():
        with open(meta, "rb") as fh:
            classes = list(pickle.load(fh, encoding="latin1")[spec["meta"][1]])
    return ImageSet(torch.from_numpy(np.concatenate(images)),
                    torch.tensor(labels, dtype=torch.int64), classes)


STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def load_stl10(root: str, split: str, download: bool) -> ImageSet:
    """split: train | test | unlabeled | train+unlabeled (labels -1 for unlabeled)."""
    folder = Path(root).expanduser() / "stl10_binary"
    parts = split.split("+")
    if not (folder / f"{parts[0]}_X.bin").exists():
        if not download:
            raise UserError(_download_hint("STL-10", Path(root), folder / f"{parts[0]}_X.bin"))
        import torchvision
        torchvision.datasets.STL10(str(Path(root).expanduser()), split="train", download=True)
    images, labels = [], []
    for part in parts:
        if part not in ("train", "test", "unlabeled"):
            raise UserError(f"dataset split {split!r}: {part!r} is not one of train, test, unlabeled")
        x = np.fromfile(folder / f"{part}_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96)
        images.append(x.transpose(0, 1, 3, 2))          # stored column-major
        if part == "unlabeled":
            labels.append(np.full(len(x), -1, dtype=np.int64))
        else:
            labels.append(np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
                    torch.from_numpy(np.concatenate(labels)), STL_CLASSES)


def load_imagefolder(root: str, split: str, size: int, classes_file=None) -> ImageSet:
    """root/<split>/<class>/<image> (or root/<class>/<image> when root/<split> is absent).

    Each image is resized (shorter side to `size`, bilinear with antialias) and
    centre-cropped to size x size once, at load time. A file that cannot be decoded
    (truncated, corrupt, not an image) is left out, with one warning naming the files.
    """
    from PIL import Image
    from .folders import BadImage, list_images, open_rgb
    paths, labels, classes = list_images(root, split, classes_file)
    images = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    keep, bad = [], []
    for i, path in enumerate(paths):
        try:
            im = open_rgb(path)
        except BadImage as e:
            bad.append(str(e))
            continue
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        images[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        keep.append(i)
    if bad:
        log.warning("%d unreadable image file(s) left out of %s (%s): %s", len(bad), root, split,
                    "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not keep:
        raise UserError(f"no readable image under {root} ({split}). Fix: check the files")
    index = torch.tensor(keep)
    return ImageSet(torch.from_numpy(images)[index], labels[index], classes)


def load_images(cfg_dataset, split: str) -> ImageSet:
    """The split of an image data set ('train' or 'test' role) in memory."""
    d = cfg_dataset
    which = d.train_split if split == "train" else d.test_split
    if d.name in _CIFAR:
        return load_cifar(d.name, d.root, which, d.download)
    if d.name == "stl10":
        return load_stl10(d.root, which, d.download)
    from .folders import FOLDER_DATASETS
    if d.name in FOLDER_DATASETS:
        return load_imagefolder(d.root, which, d.size, d.classes_file)
    raise UserError(f"dataset.name={d.name!r} is not an image data set "
                    f"(cifar10, cifar100, stl10, {', '.join(FOLDER_DATASETS)}, spirograph)")
