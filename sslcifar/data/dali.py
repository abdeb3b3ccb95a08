"""`dataset.pipeline=dali`: image folders decoded, cropped and resized by NVIDIA DALI (the
optional extra `[dali]`), the rest as the stream pipeline (sslcifar/data/stream.py).

What DALI does and what stays ours, and why: the order of the files, each rank's slice of
the global batch and every view's crop box and flip are drawn by our own code, in our
DataLoader workers, exactly as the stream pipeline draws them (a function of seed, epoch,
image and view); the workers read the files' bytes and hand them over as one packed buffer.
DALI's external source takes those bytes and boxes, and its decoder decodes only each box
(`decoders.image_slice`: ROI decoding; `mixed`, i.e. nvJPEG, on a GPU, libjpeg-turbo on a
CPU), resizes it to its view group's size (antialiased linear) and flips it. So a run is
the same on any number of workers, a resume at any step is bit-identical, and a DALI view is
the stream pipeline's view of the same box to a few grey levels (the resize kernels differ:
tests/test_dali.py measures the bound). The colour operations then run batched on the
training device with each view's parameters handed back, as for every other pipeline. On a
CPU training device with workers, each worker runs a DALI pipeline of its own (one thread,
`DaliViews.for_worker`) and the colour ops on the batch it read, as the stream pipeline's
workers do: the main process is left the step (1.14x torchvision's rate at 224 px instead
of 0.59x with DALI and the colour ops in the main process; bench/stream.py, README).
DALI's own file reader and random crop would be faster to set up but would draw the order
and the boxes from DALI's generator: no rank slices of one global batch, no exact resume.

Evaluation (kNN, linear, t-SNE) reads through DALI too: each image's shorter side resized to
size / 0.875 (as the stream pipeline) and centre-cropped.

A file DALI cannot decode does not stop a run: the batch is made again by our CPU path
(stream.py's `_gpu_views` on the CPU), which reads what Pillow reads and names the rest.
"""
import logging
from typing import Iterator, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from .augment import ViewSpec
from .order import to_device
from .folders import BadImage
from .stream import StreamSource, _gpu_views, _Plain, image_size, plain_geometry

log = logging.getLogger(__name__)

INSTALL = ("dataset.pipeline=dali needs NVIDIA DALI: pip install -e '.[dali]' (CUDA 12 "
           "wheels; nvidia-dali-cuda130 for CUDA 13), or use dataset.pipeline=stream")


def import_dali():
    """The nvidia.dali modules (dali, fn, types), or a UserError saying how to install them."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError:
        raise UserError(INSTALL) from None
    return dali, fn, types


def _placement(device: torch.device):
    """(device_id, decoder device, other ops' device) of DALI's pipeline for `device`."""
    if device.type == "cuda":
        return (device.index if device.index is not None else torch.cuda.current_device(),
                "mixed", "gpu")
    return None, "cpu", "cpu"


def _to_torch(out, device: torch.device) -> torch.Tensor:
    """A DALI batch of HWC uint8 images of one size -> uint8 [B, 3, H, W] on `device`."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray
        t = out.as_tensor()
        x = torch.empty(t.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(t, x, cuda_stream=torch.cuda.current_stream(device))
    else:
        x = torch.from_numpy(out.as_array())
    return x.permute(0, 3, 1, 2).contiguous()


def _rows(a: np.ndarray) -> List[np.ndarray]:
    """One dense array per sample (numpy's fancy indexing may leave a column-major copy)."""
    return [np.ascontiguousarray(r) for r in a]


def _files(packed) -> List[np.ndarray]:
    data, lengths, _ = packed
    return [t.numpy() for t in torch.split(data, lengths.tolist())]


def _new_pipeline(batch_size: int, num_threads: int, device: torch.device):
    """An empty DALI pipeline placed for `device`, fed one batch per run (external sources):
    (pipeline, fn, types, decoder device, other ops' device)."""
    dali, fn, types = import_dali()
    device_id, decoder, ops = _placement(device)
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                         prefetch_queue_depth=1)
    return pipe, fn, types, decoder, ops


def views_pipeline(specs: List[ViewSpec], batch_size: int, num_threads: int, device: torch.device):
    """The training views' DALI pipeline (not built): per view v, the external sources
    anchor{v} [x, y], shape{v} [w, h] (the box, full-image pixels) and flip{v}; the files'
    bytes in "files". Argument inputs (the flips) stay on the CPU, as DALI requires."""
    pipe, fn, types, decoder, ops = _new_pipeline(batch_size, num_threads, device)
    with pipe:
        files = fn.external_source(name="files", dtype=types.UINT8)
        outs = []
        for v, spec in enumerate(specs):
            anchor = fn.external_source(name=f"anchor{v}", dtype=types.FLOAT)
            shape = fn.external_source(name=f"shape{v}", dtype=types.FLOAT)
            flip = fn.external_source(name=f"flip{v}", dtype=types.INT32)
            img = fn.decoders.image_slice(files, anchor, shape, device=decoder,
                                          output_type=types.RGB, axis_names="WH",
                                          normalized_anchor=False, normalized_shape=False)
            interp = types.INTERP_CUBIC if spec.interpolation == "bicubic" else types.INTERP_LINEAR
            img = fn.resize(img, device=ops, resize_x=spec.size, resize_y=spec.size,
                            antialias=True, interp_type=interp)
            outs.append(fn.flip(img, device=ops, horizontal=flip))
        pipe.set_outputs(*outs)
    return pipe


def plain_pipeline(size: int, batch_size: int, num_threads: int, device: torch.device):
    """Evaluation's DALI pipeline (not built): "files", "size" [h, w] and "anchor" [left, top]
    from the stream pipeline's plain_geometry; resize, then the size x size crop."""
    pipe, fn, types, decoder, ops = _new_pipeline(batch_size, num_threads, device)
    with pipe:
        files = fn.external_source(name="files", dtype=types.UINT8)
        new_size = fn.external_source(name="size", dtype=types.FLOAT)
        anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
        img = fn.decoders.image(files, device=decoder, output_type=types.RGB)
        img = fn.resize(img, device=ops, size=new_size, antialias=True,
                        interp_type=types.INTERP_LINEAR)
        pipe.set_outputs(fn.slice(img, anchor, np.array([size, size], dtype=np.float32),
                                  device=ops, axis_names="WH", normalized_anchor=False,
                                  normalized_shape=False))
    return pipe


class DaliViews:
    """Training views: a batch of `stream._collate_bytes` and its views' specs -> (uint8
    [B, 3, S, S] per view on `device`, unreadable files' messages). One DALI pipeline, built
    at the first batch (a fresh one after a refused batch); `num_threads` DALI threads (its
    CPU decode and resize). On a CPU training device with workers each worker has its own
    (for_worker), for the epoch its workers live."""

    def __init__(self, batch_size: int, device: torch.device, num_threads: int = 2):
        import_dali()
        self.batch_size, self.device = batch_size, device
        self.num_threads = max(1, num_threads)
        self.pipe, self.specs = None, None
        self.fallbacks = 0          # batches DALI refused, made by our CPU path

    def for_worker(self) -> "DaliViews":
        """A DaliViews for one DataLoader worker (DALI's CPU path, with the colour ops there
        too): its own pipeline, built in the worker at its first batch, one DALI thread, as
        the worker has one core of its own."""
        return DaliViews(self.batch_size, self.device, num_threads=1)

    def _build(self):
        pipe = views_pipeline(self.specs, self.batch_size, self.num_threads, self.device)
        pipe.build()
        return pipe

    def __call__(self, packed, boxes: torch.Tensor, flips: torch.Tensor, specs: List[ViewSpec],
                 device):
        try:
            if self.pipe is None:
                self.specs = specs
                self.pipe = self._build()
            self.pipe.feed_input("files", _files(packed))
            b = boxes.numpy().astype(np.float32)        # [B, V, 4]: top, left, h, w
            for v in range(len(self.specs)):              # DALI takes dense arrays only
                self.pipe.feed_input(f"anchor{v}", _rows(b[:, v, [1, 0]]))     # x, y
                self.pipe.feed_input(f"shape{v}", _rows(b[:, v, [3, 2]]))      # w, h
                self.pipe.feed_input(f"flip{v}", _rows(flips[:, v].numpy().astype(np.int32)))
            return [_to_torch(o, self.device) for o in self.pipe.run()], []
        except RuntimeError as e:
            # an unreadable file stops DALI's whole batch (and its pipeline): this batch by
            # our CPU path, which names the file; a fresh pipeline for the next one
            self.pipe = None
            self.fallbacks += 1
            log.warning("DALI refused a batch (%s): made by the CPU path", str(e).splitlines()[0])
            views, bad = _gpu_views(packed, boxes, flips, specs, torch.device("cpu"))
            return [v.to(self.device) for v in views], bad


class _FileBytes(Dataset):
    """Evaluation's item: (the file's bytes, its path, its resize and crop [new width, new
    height, left, top] as the stream pipeline's (plain_geometry), or -1s if its header is
    unreadable)."""

    def __init__(self, paths, size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            geometry = plain_geometry(*image_size(path), self.size)
        except BadImage:
            geometry = (-1, -1, -1, -1)
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8)), str(path), torch.tensor(geometry)


def _collate_files(items):
    data, names, geometry = zip(*items)
    return (torch.cat(data), torch.tensor([len(d) for d in data]), list(names)), torch.stack(geometry)


class DaliSource(StreamSource):
    """A folder streamed through DALI: training views by DaliViews (built by the loader),
    evaluation's plain images by a DALI pipeline of its own."""

    def __init__(self, d, split, device, specs):
        import_dali()
        super().__init__(d, split, device, specs)
        self._plain_pipes = {}
        self.fallbacks = 0          # batches DALI refused, made by the stream pipeline's code

    def _plain_pipe(self, batch_size: int):
        if batch_size not in self._plain_pipes:
            pipe = plain_pipeline(self.size, batch_size, max(1, self.num_workers), self.device)
            pipe.build()
            self._plain_pipes[batch_size] = pipe
        return self._plain_pipes[batch_size]

    def plain_batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        order = index.tolist()
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        loader = DataLoader(_FileBytes(self.paths, self.size), batch_sampler=batches,
                            num_workers=self.num_workers, collate_fn=_collate_files)
        for which, (packed, geometry) in zip(batches, loader):
            try:
                if (geometry < 0).any():
                    raise RuntimeError("an unreadable header")
                pipe = self._plain_pipe(batch_size)
                pipe.feed_input("files", _files(packed))
                g = geometry.numpy().astype(np.float32)
                pipe.feed_input("size", _rows(g[:, [1, 0]]))          # DALI's size: h, w
                pipe.feed_input("anchor", _rows(g[:, 2:]))
                x = _to_torch(pipe.run()[0], self.device)
            except RuntimeError as e:       # an unreadable file: this batch as stream does it
                self.fallbacks += 1
                log.warning("DALI refused an evaluation batch (%s): made as the stream "
                            "pipeline makes it", str(e).splitlines()[0])
                self._plain_pipes.pop(batch_size, None)
                items = [_Plain(self.paths, self.size)[i] for i in which]
                self.report([b for _, b in items])
                x = to_device(torch.stack([x for x, _ in items]), self.device)
            yield self.normalize(x)
