"""Folders of image files: root/<split>/<class>/<image> (ImageNet's train/<wnid>/*.JPEG and
val/<wnid>/*.JPEG, SupContrast's animals10, your own data), listed once and decoded with
errors reported by path instead of a worker's traceback.

Both pipelines read them through here: the in-memory one (`datasets.load_imagefolder`,
everything decoded once at dataset.size) and the streaming one (`stream.py`, decoded per
batch in DataLoader workers, crops taken on the full image).
"""
import functools
import importlib
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# data sets read from folders (conf/dataset/<name>.yaml), all with this layout
FOLDER_DATASETS = ("imagefolder", "imagenet", "imagenet100")




def read_classes_file(path: str) -> List[str]:
    """Class folder names, whitespace-separated (solo-learn's imagenet100_classes.txt); a
    relative path is looked up from the launch directory, then in conf/."""
    from ..paths import config_dir
    p = Path(path).expanduser()
    if not p.is_file() and not p.is_absolute() and (config_dir() / p).is_file():
        p = config_dir() / p
    if not p.is_file():
        raise UserError(f"dataset.classes_file={path} does not exist. Fix: point it at a file "
                        f"of class folder names, or null for every class folder")
    return p.read_text().split()


def list_images(root: str, split: str, classes_file: Optional[str] = None
                ) -> Tuple[List[Path], torch.Tensor, List[str]]:
    """(paths, labels [N] int64, class names) of root/<split>/<class>/<image> (or
    root/<class>/<image> when root/<split> is absent), classes sorted by name, images by path;
    with classes_file only its classes (labels in the sorted order of those kept)."""
    base = Path(root).expanduser()
    folder = base / split if (base / split).is_dir() else base
    if folder == base and split in ("test", "val") and (base / "train").is_dir():
        raise UserError(f"{base} has a train/ folder but no {split}/ folder. Fix: add "
                        f"{base}/{split}/<class>/<image>, or set dataset.test_split to its name")
    if folder == base and split in ("test", "val"):
        log.warning("%s has no %s/ folder: the kNN monitor and linear evaluation score the "
                    "training images themselves (set dataset.test_split to a held-out folder)",
                    base, split)
    if not folder.is_dir():
        raise UserError(f"dataset.root={root!r} is not a folder. Fix: point dataset.root at "
                        f"a folder of class sub-folders (root/<class>/<image>)")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if classes_file:
        wanted = set(read_classes_file(classes_file))
        missing = sorted(wanted - set(classes))
        if missing:
            raise UserError(f"dataset.classes_file lists {len(missing)} class(es) that {folder} "
                            f"does not have (e.g. {', '.join(missing[:3])}). Fix: the right "
                            f"dataset.root, or a classes_file of its folder names")
        classes = [c for c in classes if c in wanted]
    files = [(p, c) for c, name in enumerate(classes)
             for p in sorted((folder / name).rglob("*"))
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not files:
        raise UserError(f"no images found under {folder} (expected {folder}/<class>/<image> with "
                        f"extensions {', '.join(IMAGE_EXTENSIONS)}). Fix: point dataset.root at "
                        f"the folder of class sub-folders")
    return [p for p, _ in files], torch.tensor([c for _, c in files], dtype=torch.int64), classes


def open_rgb(path, draft_size: Optional[Tuple[int, int]] = None, name: Optional[str] = None):
    """The image as an RGB PIL image; with draft_size, a JPEG is decoded at the smallest
    of 1/1, 1/2, 1/4, 1/8 scale that is still at least that large (libjpeg's DCT scaling:
    far less work for a crop much smaller than the image). Raises BadImage."""
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
        if draft_size is not None and im.format == "JPEG":
            im.draft("RGB", draft_size)
        im.load()                       # decode now, inside the try: truncated files raise here
        return im if im.mode == "RGB" else im.convert("RGB")   # (convert would copy an RGB one)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise BadImage(f"{name or path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def decode_rgb(path: Path) -> torch.Tensor:
    """The whole image as uint8 [3, H, W]: a tensor decoder (libjpeg-turbo, libpng, libwebp)
    where one reads the file, 0.32 against Pillow's 0.50 ms for a 375 px JPEG (2-core AMD
    EPYC); Pillow for the rest (BMP, TIFF, ...) and to name what is wrong with a file
    neither reads. Raises BadImage."""
    decode = tensor_decoder()
    if decode is not None:
        try:
            return decode(torch.from_numpy(np.fromfile(path, dtype=np.uint8)))
        except (RuntimeError, ValueError, OSError):
            pass
    return pil_to_uint8(open_rgb(path))


def decode_rgb_bytes(data: torch.Tensor, name: str) -> torch.Tensor:
    """decode_rgb of a file already read into uint8 [N]; `name` for the message. Raises BadImage."""
    import io
    decode = tensor_decoder()
    if decode is not None:
        try:
            return decode(data)
        except (RuntimeError, ValueError, OSError):
            pass
    return pil_to_uint8(open_rgb(io.BytesIO(data.numpy().tobytes()), name=name))


_DECODER = []


def tensor_decoder():
    """torchcodec's decode_image where it is installed (torchvision deprecated its own image
    decoders in 0.29 for it; not a dependency), else torchvision.io's; None: Pillow only."""
    if not _DECODER:
        fn = None
        for module in ("torchcodec.decoders", "torchvision.io"):
            try:
                fn = functools.partial(_decode_with, importlib.import_module(module))
                break
            except Exception:       # noqa: BLE001 -- absent, or built for another torch
                continue
        _DECODER.append(fn)
    return _DECODER[0]


def _decode_with(module, data: torch.Tensor) -> torch.Tensor:
    return module.decode_image(data, mode=module.ImageReadMode.RGB)


def pil_to_uint8(im) -> torch.Tensor:
    """A PIL RGB image -> uint8 [3, H, W] (a channels-last view of its pixels)."""
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)


class BadImage(Exception):
    """An unreadable, truncated or non-image file: the message names its path."""
