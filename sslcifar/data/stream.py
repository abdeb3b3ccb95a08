"""Data larger than memory: image files streamed through DataLoader workers
(`dataset.pipeline=stream`, or `auto` when the decoded set would not fit
`dataset.memory_budget_mb`).

In a worker, per image: each view's RandomResizedCrop box is drawn on the *full* image
(its size from the file's header), the file is read and decoded once (a JPEG at the
smallest DCT scale that still covers every view's crop: Pillow's draft mode when reduced,
a tensor decoder at full size), and each crop is resized to its view group's size
(torch's uint8 antialiased kernel). Only the small uint8 views (and their boxes and flips) cross the process
boundary, into pinned memory. On the training device the colour operations (jitter,
grayscale, blur, solarize) and the normalisation run batched, exactly as for in-memory
data, and every view hands back its parameters.

The randomness of a crop is a function of (seed, epoch, image index, view), never of a
worker's state: any number of workers, and a resume at any step, gives the same views;
each rank reads its slice of the global batch as the in-memory path does.

Evaluation streams too: each image's shorter side resized to size / 0.875 (256 -> 224
on ImageNet, scaled for other sizes) and centre-cropped, in one pass through the workers.
"""
import logging
import math
import random
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .augment import (BatchNormalize, CompiledApply, ViewSpec, colour, draw_jitter, in_chunks,
                      sample_colour)
from .batch import Batch, Nuisance
from .datasets import stratified_index
from .folders import (BadImage, decode_rgb, decode_rgb_bytes, list_images, open_rgb,
                      pil_to_uint8, tensor_decoder)
from .order import mix_seed, to_device, worker_batches
from .ops import crop_box

log = logging.getLogger(__name__)

EVAL_CROP = 0.875       # the centre crop takes 87.5% of the resized shorter side (224 of 256)


def image_size(path):
    """(width, height) from the file's header, without decoding it. Raises BadImage."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as head:
            return head.size
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise BadImage(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def draw_geometry(width: int, height: int, specs: List[ViewSpec], seeds: List[int]):
    """Each view's RandomResizedCrop box [top, left, h, w] on the full image and its flip,
    from its own seed (a function of seed, epoch, image, view: no worker state)."""
    boxes, flips = [], []
    for spec, seed in zip(specs, seeds):
        rng = random.Random(seed)
        boxes.append(list(crop_box(height, width, spec.crop_scale, spec.crop_ratio, rng)))
        flips.append(rng.random() < spec.flip_p)
    return boxes, flips


def resize_crop(image: torch.Tensor, box, size: int, mode: str, flip: bool) -> torch.Tensor:
    """uint8 [3, H, W] (channels-last) -> uint8 [3, size, size]: the box (top, left, h, w)
    resized with antialiasing, as PIL's resize (torch's uint8 kernel: within 2 of PIL's
    values, tested; 3x faster: 0.22 against 0.69 ms for a 224 px view on an AMD EPYC)."""
    top, left, h, w = box
    crop = image[:, top:top + h, left:left + w].unsqueeze(0)
    out = F.interpolate(crop, size=(size, size), mode=mode, antialias=True, align_corners=False)[0]
    return out.flip(-1) if flip else out


def decode_views(path, specs: List[ViewSpec], seeds: List[int]):
    """The views of one file: for view v, a crop box drawn (from seeds[v]) as
    RandomResizedCrop on the full-resolution image, the crop resized to the view's size,
    flipped with p=flip_p. Returns (views [3, S_v, S_v] uint8, boxes [V, 4] in full-image
    pixels, flips [V] bool). Raises BadImage."""
    width, height = image_size(path)
    boxes, flips = draw_geometry(width, height, specs, seeds)
    # decode once, at a scale that keeps every crop at least its output size: where every
    # crop is twice its view or more, libjpeg decodes at 1/2, 1/4 or 1/8 (Pillow's draft
    # mode); else the full image, by a tensor decoder (decode_rgb). A drafted image keeps
    # every crop at least its view's size, so a rounded box is never empty
    scale = max(spec.size / min(h, w) for spec, (_, _, h, w) in zip(specs, boxes))
    if scale <= 0.5:
        im = open_rgb(path, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        image = pil_to_uint8(im)
    else:
        image = decode_rgb(path)
    sy, sx = image.shape[1] / height, image.shape[2] / width
    views = []
    for spec, (top, left, h, w), flip in zip(specs, boxes, flips):
        if (sx, sy) != (1, 1):      # decoded at 1/2, 1/4 or 1/8: the box to the nearest pixel
            t, l = round(top * sy), round(left * sx)
            top, left, h, w = t, l, max(1, round((top + h) * sy) - t), max(1, round((left + w) * sx) - l)
        views.append(resize_crop(image, (top, left, h, w), spec.size, spec.interpolation, flip))
    return views, torch.tensor(boxes), torch.tensor(flips)


def plain_geometry(width: int, height: int, size: int):
    """Evaluation's resize and crop of a width x height image: (new width, new height, left,
    top): the shorter side to round(size / 0.875) (CIFAR-sized: size), the centre size x size."""
    short = round(size / EVAL_CROP) if size >= 64 else size          # CIFAR-sized: no margin
    scale = short / min(width, height)
    nw, nh = max(short, round(width * scale)), max(short, round(height * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def decode_plain(path, size: int) -> torch.Tensor:
    """Evaluation's image: shorter side to round(size / 0.875), centre crop size x size."""
    from PIL import Image
    width, height = image_size(path)
    nw, nh, left, top = plain_geometry(width, height, size)
    scale = min(nw, nh) / min(width, height)         # the shorter side's scale
    im = open_rgb(path, (math.ceil(width * scale), math.ceil(height * scale)))
    im = im.resize((nw, nh), Image.BILINEAR)
    return pil_to_uint8(im.crop((left, top, left + size, top + size)))


class _Views(Dataset):
    """Item (index, seed of the image this epoch) -> (views, boxes, flips, index, bad path).
    A file that cannot be decoded is replaced by the next readable one (deterministically),
    and its path comes back, for the main process to report."""

    def __init__(self, paths, specs: List[ViewSpec]):
        self.paths = paths
        self.specs = [s for s in specs for _ in range(s.count)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        i, seed, *step = item           # the step too when the worker does the colour ops
        bad = ""
        for attempt in range(len(self.paths)):
            j = (i + attempt) % len(self.paths)
            try:
                seeds = [mix_seed(seed, v) for v in range(len(self.specs))]
                views, boxes, flips = decode_views(self.paths[j], self.specs, seeds)
                return (views, boxes, flips, i, bad, *step)
            except BadImage as e:
                bad = bad or str(e)
        raise RuntimeError("no readable image in the data set")


class _Plain(Dataset):
    def __init__(self, paths, size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return decode_plain(self.paths[i], self.size), ""
        except BadImage as e:       # scored as a black image, and reported
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(e)


class StreamSource:
    """A folder data set read from disk: training views through `StreamBatches`, plain
    images through `plain_batches` (workers) or `plain` (in this process)."""
    task = "classification"
    on_host = True

    def __init__(self, d, split: str, device: torch.device, specs: Optional[List[ViewSpec]]):
        which = d.train_split if split == "train" else d.test_split
        self.paths, labels, self.classes = list_images(d.root, which, d.classes_file)
        if split == "train" and d.subset is not None:
            keep = (stratified_index(labels, d.subset) if d.subset_mode == "stratified"
                    else torch.arange(d.subset))
            self.paths = [self.paths[i] for i in keep.tolist()]
            labels = labels[keep]
        self.device = device
        self.labels = labels.to(device)
        self.targets = self.labels
        self.size, self.num_workers = d.size, d.num_workers
        self.specs = specs
        self.normalize = BatchNormalize(d.size, d.mean, d.std)
        self.reported = set()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def report(self, bad: List[str]) -> None:
        """Unreadable files: one warning each, the first time they are met."""
        for b in bad:
            if b and b not in self.reported:
                self.reported.add(b)
                log.warning("unreadable image skipped (replaced by the next one): %s", b)

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        items = [_Plain(self.paths, self.size)[int(i)] for i in index.tolist()]
        self.report([b for _, b in items])
        x = torch.stack([x for x, _ in items])
        return self.normalize(to_device(x, self.device))

    def plain_batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """The plain images of `index`, in order, decoded by DataLoader workers."""
        order = index.tolist()
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        loader = DataLoader(_Plain(self.paths, self.size), batch_sampler=batches,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for x, bad in loader:
            self.report(list(bad))
            yield self.normalize(x.to(self.device, non_blocking=True))


class _Bytes(_Views):
    """For decode=cuda: the worker reads the file and draws the crop boxes on its full size
    (from the JPEG header); the decode runs batched on the GPU (nvJPEG)."""

    def __getitem__(self, item):
        import torchvision
        i, seed, *step = item           # the step too when the worker does the colour ops
        bad = ""
        for attempt in range(len(self.paths)):
            path = self.paths[(i + attempt) % len(self.paths)]
            try:
                width, height = image_size(path)
                data = torchvision.io.read_file(str(path))
                # a truncated JPEG passes the header check, and a batched GPU decode would
                # fail on it or return a grey half: named and replaced, as decode=cpu does
                if data[:2].tolist() == [0xFF, 0xD8] and not _has_end_marker(data):
                    raise BadImage(f"{path}: truncated JPEG (no end-of-image marker)")
                boxes, flips = draw_geometry(width, height, self.specs,
                                             [mix_seed(seed, v) for v in range(len(self.specs))])
                return data, torch.tensor(boxes), torch.tensor(flips), i, str(path), bad, *step
            except BadImage as e:
                bad = bad or str(e)
        raise RuntimeError("no readable image in the data set")


def _has_end_marker(data: torch.Tensor, tail: int = 64) -> bool:
    """JPEG's end-of-image marker FF D9 among the last bytes (some writers pad after it)."""
    end = data[-tail:]
    return bool(((end[:-1] == 0xFF) & (end[1:] == 0xD9)).any())


def _collate_bytes(items):
    """The batch's files packed into ONE uint8 tensor with their lengths: a worker hands every
    tensor to the main process through a shared-memory file descriptor of its own, and a list
    of 512 file buffers per batch ran past the open-file limit on the H200 machine (the
    worker's queue thread failed on os.dup and the training loop waited forever)."""
    data, boxes, flips, index, names, bad = zip(*items)
    packed = (torch.cat(data), torch.tensor([len(d) for d in data]), list(names))
    return packed, torch.stack(boxes), torch.stack(flips), torch.tensor(index), list(bad)


def _decode_files(files: List[torch.Tensor], names: List[str], boxes: torch.Tensor, device):
    """(uint8 [3, H, W] per file, unreadable files' messages): one batched decode (nvJPEG on
    a GPU); if that refuses the batch (a PNG named .jpg, a CMYK JPEG nvJPEG does not read),
    each file on its own, those the device cannot read by the CPU decoders as decode=cpu
    reads them, and one that nothing reads as a black image (named, as evaluation does)."""
    import torchvision
    rgb = torchvision.io.ImageReadMode.RGB
    try:
        return torchvision.io.decode_jpeg(files, device=device, mode=rgb), []
    except RuntimeError:
        out, bad = [], []
        for k, (data, name) in enumerate(zip(files, names)):
            try:
                out.append(torchvision.io.decode_jpeg(data, device=device, mode=rgb))
                continue
            except RuntimeError:
                pass
            try:
                out.append(decode_rgb_bytes(data, name).to(device))
            except BadImage as e:
                bottom, right = (boxes[k, :, 0] + boxes[k, :, 2]).max(), (boxes[k, :, 1] + boxes[k, :, 3]).max()
                out.append(torch.zeros(3, int(bottom), int(right), dtype=torch.uint8, device=device))
                bad.append(str(e))
        return out, bad


def _gpu_views(packed, boxes: torch.Tensor, flips: torch.Tensor, specs: List[ViewSpec],
               device):
    """A batch of `_collate_bytes` decoded (nvJPEG on a GPU, libjpeg on a CPU), each view's
    box cropped and resized: ([B, 3, S, S] uint8 per view, unreadable files' messages)."""
    data, lengths, names = packed
    images, bad = _decode_files(list(torch.split(data, lengths.tolist())), names, boxes, device)
    views = []
    for v, spec in enumerate(specs):
        out = []
        for img, (top, left, h, w), flip in zip(images, boxes[:, v].tolist(), flips[:, v].tolist()):
            crop = img[:, top:top + h, left:left + w].float()[None]
            crop = F.interpolate(crop, size=(spec.size, spec.size), mode=spec.interpolation,
                                 align_corners=False, antialias=True)
            out.append(crop.flip(-1) if flip else crop)
        views.append(torch.cat(out).round_().clamp_(0, 255).to(torch.uint8))
    return views, bad


def _colour_whole(x: torch.Tensor, spec: ViewSpec, p, norm: BatchNormalize) -> torch.Tensor:
    """uint8 crops [B, 3, S, S] -> float32 views after the colour ops, normalised."""
    return norm.normalize(colour(x.float().div_(255), spec, p))


def _colour(x: torch.Tensor, spec: ViewSpec, p, norm: BatchNormalize) -> torch.Tensor:
    """_colour_whole in cache-sized chunks on a CPU."""
    return in_chunks(lambda c, q: _colour_whole(c, spec, q, norm), x, p, spec.size)


def colour_views(images: List[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor,
                 specs: List[ViewSpec], norm: BatchNormalize, g: torch.Generator, device,
                 apply=None):
    """Each view's colour parameters drawn from `g` (view by view, in order) and applied
    batched by `apply` (default _colour), normalised: (views [B, 3, S, S] float, params with
    each view's box and flip)."""
    apply = apply or _colour
    out, params = [], []
    for v, (x, spec) in enumerate(zip(images, specs)):
        p = sample_colour(spec, len(x), g, device)
        p["box"], p["flip"] = boxes[:, v].to(device), flips[:, v].to(device)
        out.append(apply(x, spec, p, norm))
        params.append(p)
    return out, params


class _ColourInWorker:
    """collate_fn for a CPU training device: the worker that made the batch also applies its
    colour operations, batched, with the parameters the main process would draw (the
    generator of (seed, epoch, step, rank)); the main process is left only the step. The
    uint8 crops come along for replay (the invariance penalty re-colours them).
    views_from_bytes (DALI's CPU path: DaliViews.for_worker()): the items are the files'
    bytes, and their views are made here too, by the worker's own pipeline."""

    def __init__(self, specs: List[ViewSpec], norm: BatchNormalize, seed: int, epoch: int,
                 rank: int, views_from_bytes=None):
        self.specs, self.norm, self.seed, self.epoch, self.rank = specs, norm, seed, epoch, rank
        self.views_from_bytes = views_from_bytes

    def __call__(self, items):
        from torch.utils.data import default_collate
        step, items = items[0][-1], [it[:-1] for it in items]
        refused = 0
        if self.views_from_bytes is None:
            views, boxes, flips, index, bad = default_collate(items)
        else:
            packed, boxes, flips, index, bad = _collate_bytes(items)
            before = self.views_from_bytes.fallbacks
            views, unreadable = self.views_from_bytes(packed, boxes, flips, self.specs,
                                                      torch.device("cpu"))
            bad, refused = bad + unreadable, self.views_from_bytes.fallbacks - before
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, step, self.rank))
        out, params = colour_views(views, boxes, flips, self.specs, self.norm, g,
                                   torch.device("cpu"), _colour_into_shared_memory)
        return (out, params, views, refused), boxes, flips, index, bad


def _colour_into_shared_memory(x: torch.Tensor, spec: ViewSpec, p, norm: BatchNormalize):
    """_colour written straight into shared memory: what a worker returns is moved there
    anyway, a copy of the whole float batch (77 MB for 64 two-view images at 224 px)."""
    out = shared_empty((len(x), 3, spec.size, spec.size))
    return in_chunks(lambda c, q: _colour_whole(c, spec, q, norm), x, p, spec.size, out=out)


def shared_empty(shape) -> torch.Tensor:
    """An empty float32 tensor allocated in shared memory, as default_collate allocates its
    output in a worker (torch.empty(...).share_memory_() would allocate it privately first,
    then move it: 38 MB more to write per batch of 224 px views)."""
    numel = math.prod(shape)
    storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=torch.float32).set_(storage._untyped_storage, 0, shape)


class StreamBatches:
    """The training batches of a StreamSource: same order and rank slices as DeviceBatches.
    decode=cuda decodes on the GPU (torchvision's batched nvJPEG, as DALI's mixed decoder);
    without a GPU it falls back to the workers' decode, saying so. compile=True (augment.compile)
    runs the colour ops through torch.compile, falling back to eager as CompiledApply does."""

    def __init__(self, source: StreamSource, batch_size: int, seed: int, rank: int, world: int,
                 num_workers: int, device: torch.device, decode: str = "cpu",
                 compile: bool = False, views_from_bytes=None):
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world = rank, world
        self.steps_per_epoch = len(source) // batch_size
        self.device, self.num_workers = device, num_workers
        self.gpu_decode = decode == "cuda" and device.type == "cuda"
        if decode == "cuda" and not self.gpu_decode:
            log.warning("dataset.decode=cuda needs a CUDA device: decoding in the workers instead")
        # the workers read the files and draw the boxes; the batch's views are made by
        # views_from_bytes (DALI: sslcifar/data/dali.py) or nvJPEG (decode=cuda)
        self.views_from_bytes = views_from_bytes or (_gpu_views if self.gpu_decode else None)
        self.dataset = (_Bytes if self.views_from_bytes else _Views)(source.paths, source.specs)
        tensor_decoder()       # imported once here (seconds), not in each worker of each epoch
        self.spec_of_view = self.dataset.specs
        self.colour = CompiledApply(_colour_whole, _colour, chunks=True) if compile else _colour
        # on a CPU the colour ops run in the workers, in parallel, as torchvision's per-image
        # pipeline runs its own (in the one main process they halved the streamed rate at
        # 224 px); compiled, they stay in the main process (one compile, not one per worker).
        # DALI's CPU path goes with them: each worker decodes its batch with its own pipeline
        self.colour_in_workers = device.type == "cpu" and num_workers > 0 and not compile

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        batches = worker_batches(len(self.source), self.batch_size, self.seed, epoch,
                                 self.rank, self.world, start_step)
        collate = _collate_bytes if self.views_from_bytes else None
        src, norm, specs = self.source, self.source.normalize, self.spec_of_view
        if self.colour_in_workers:
            batches = [[(*item, step) for item in b] for step, b in enumerate(batches, start_step)]
            collate = _ColourInWorker(specs, norm, self.seed, epoch, self.rank,
                                      self.views_from_bytes and self.views_from_bytes.for_worker())
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            collate_fn=collate)
        for step, (views, boxes, flips, index, bad) in enumerate(loader, start=start_step):
            src.report(list(bad))
            index = index.to(self.device, non_blocking=True)
            if self.colour_in_workers:
                out, params, images, refused = views
                if refused:                    # batches a worker's DALI pipeline refused
                    self.views_from_bytes.fallbacks += refused
            else:
                g = torch.Generator(device=self.device)
                g.manual_seed(mix_seed(self.seed, epoch, step, self.rank))
                if self.views_from_bytes:
                    images, unreadable = self.views_from_bytes(views, boxes, flips, specs, self.device)
                    src.report(unreadable)
                else:
                    images = [v.to(self.device, non_blocking=True) for v in views]
                out, params = colour_views(images, boxes, flips, specs, norm, g, self.device,
                                           self.colour)

            def replay(v, p, images=images):      # the crop stays; the colour is redone
                return _colour(images[v], specs[v], p, norm)

            def draw(v, m, n, gen):
                return draw_jitter(specs[v], m, n, gen, self.device)
            yield Batch(out, index, src.labels[index], params, replay, Nuisance("jitter", draw))


def decoded_bytes(num_images: int, size: int) -> int:
    """The memory an in-memory copy at dataset.size would take (uint8, 3 channels)."""
    return num_images * 3 * size * size


def memory_budget(d) -> int:
    """dataset.memory_budget_mb in bytes, or half of the host's available memory."""
    if d.memory_budget_mb is not None:
        return int(d.memory_budget_mb * 2**20)
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable"))
        return avail // 2
    except (OSError, StopIteration):
        return 8 * 2**30
