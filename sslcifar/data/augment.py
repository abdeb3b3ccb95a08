"""Batched SimCLR-style augmentation of uint8 images, on their own device, in two steps.

torchvision augments one PIL image at a time in DataLoader workers; here a whole
batch [B, 3, H, W] is augmented at once with tensor operations (`sslcifar.data.ops`)
and per-sample random parameters. The semantics follow torchvision's transforms,
in SimCLR's order:

    RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter, p)
    -> RandomGrayscale -> RandomApply(GaussianBlur, p) -> RandomSolarize -> Normalize

and the work is split in two:

1. `sample_params(spec, n, H, W, generator)` draws every random choice of n views
   from the generator into a dict of tensors (the view's *parameters*: crop boxes,
   flips, jitter factors and order, grayscale/blur/solarize draws);
2. `apply_params(images, spec, params)` makes the views from them. It draws nothing,
   and it is differentiable in the float factors (`params["jitter"]`: brightness,
   contrast, saturation, hue), which the invariance gradient penalty needs.

Same generator state, same parameters, same views: the trainer reseeds per step for
exact resume, and a method can re-make a view from its parameters (`ViewMaker.replay`).

- crop boxes are sampled exactly as `RandomResizedCrop.get_params` samples them
  (10 attempts, then the central fallback), and resized by bilinear or bicubic
  interpolation with PyTorch's pixel-centre convention (`align_corners=False`),
  reading only pixels inside the crop, as cropping then resizing does. When a crop is
  larger than the output (downscaling) there is no antialiasing: it equals
  torchvision's tensor op with `antialias=False` (CIFAR and STL crops never downscale);
- colour jitter draws brightness, contrast, saturation in [max(0, 1-x), 1+x], hue in
  [-h, h], and applies the four in a random order per sample, with the exact HSV hue
  shift and a clamp to [0, 1] after each, like torchvision's tensor ops;
- no host-device synchronisation: every choice is a mask or a per-sample factor, so
  the whole augmentation can be queued on a GPU without waiting.
"""
import ctypes
import logging
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .ops import (_per_sample, adjust_hue, gaussian_blur, resized_crop, rgb_to_grayscale,
                  sample_crop_boxes, select, solarize)

Params = Dict[str, torch.Tensor]
log = logging.getLogger(__name__)

# ColorJitter's four factors in params["jitter"][:, k]; the order tensor holds these indices
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation of one view group, every field resolved (`sslcifar.data.views`
    builds these from the config). `count` views of `size` x `size` pixels each."""
    size: int
    count: int = 1
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel_size: int = 3
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    jitter_mode: str = "torchvision"    # torchvision (random order, exact HSV hue) | invclr


# ---------------------------------------------------------------------- 1. sampling

def draw_jitter(spec: ViewSpec, m: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """[m, n, 4] fresh jitter factors from the spec's ranges (brightness, contrast and
    saturation uniform in [max(0, 1-x), 1+x], hue in [-h, h]), as sample_params draws them."""
    u = torch.rand(m, n, 4, generator=generator, device=device)
    ranges = [(max(0.0, 1 - x), 1 + x) for x in (spec.brightness, spec.contrast, spec.saturation)]
    factors = [lo + (hi - lo) * u[..., k] for k, (lo, hi) in enumerate(ranges)]
    return torch.stack(factors + [(2 * u[..., HUE] - 1) * spec.hue], dim=-1)


def sample_params(spec: ViewSpec, n: int, height: int, width: int,
                  generator: torch.Generator, device) -> Params:
    """Every random choice of n views of images of height x width, drawn from `generator`.

    Returns a dict of tensors, all with n rows:
        box [n, 4] int64        top, left, height, width of the crop
        flip [n] bool           horizontal flip
        jitter_on [n] bool      colour jitter applied
        jitter [n, 4] float     brightness, contrast, saturation factors and hue shift
                                (as drawn; they act only where jitter_on)
        order [n, 4] int64      the order of the four jitter ops (a permutation of 0..3)
        gray [n] bool           converted to grayscale
        blur_sigma [n] float    Gaussian blur sigma (0: not blurred)
        solarize [n] bool       solarized
    An op whose probability is 0 draws nothing (neutral values), so switching one off
    does not shift the random stream of the others.
    """
    return {**sample_geometry(spec, n, height, width, generator, device),
            **sample_colour(spec, n, generator, device)}


def sample_geometry(spec: ViewSpec, n: int, height: int, width: int,
                    generator: torch.Generator, device) -> Params:
    """The crop boxes and flips of sample_params (drawn first)."""
    box = torch.stack(sample_crop_boxes(n, height, width, spec.crop_scale, spec.crop_ratio,
                                        generator, device), dim=1)
    return {"box": box, "flip": torch.rand(n, generator=generator, device=device) < spec.flip_p}


def sample_colour(spec: ViewSpec, n: int, generator: torch.Generator, device) -> Params:
    """The colour choices of sample_params (drawn after the geometry): jitter, grayscale,
    blur, solarize. The streaming pipeline draws only these on the device."""
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    p: Params = {}
    if spec.jitter_p > 0:
        p["jitter_on"] = rand(n) < spec.jitter_p
        u = rand(n, 4)
        ranges = [(max(0.0, 1 - s), 1 + s) for s in (spec.brightness, spec.contrast, spec.saturation)]
        factors = torch.stack([lo + (hi - lo) * u[:, k] for k, (lo, hi) in enumerate(ranges)], 1)
        hue = (2 * u[:, HUE] - 1) * spec.hue
        p["jitter"] = torch.cat([factors, hue[:, None]], dim=1)
        p["order"] = rand(n, 4).argsort(dim=1)          # a uniform random permutation of 0..3
    else:
        p["jitter_on"] = torch.zeros(n, dtype=torch.bool, device=device)
        p["jitter"] = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device).expand(n, 4).clone()
        p["order"] = torch.arange(4, device=device).expand(n, 4).clone()
    p["gray"] = (rand(n) < spec.grayscale_p if spec.grayscale_p > 0
                 else torch.zeros(n, dtype=torch.bool, device=device))
    if spec.blur_p > 0:
        lo, hi = spec.blur_sigma
        sigma = lo + (hi - lo) * rand(n)
        p["blur_sigma"] = torch.where(rand(n) < spec.blur_p, sigma, torch.zeros_like(sigma))
    else:
        p["blur_sigma"] = torch.zeros(n, device=device)
    p["solarize"] = (rand(n) < spec.solarize_p if spec.solarize_p > 0
                     else torch.zeros(n, dtype=torch.bool, device=device))
    return p


# ---------------------------------------------------------------------- 2. applying

def geometry(images: torch.Tensor, spec: ViewSpec, params: Params) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, size, size] in [0, 1]: crop, resize, flip."""
    x = images.float().div_(255)
    return resized_crop(x, *params["box"].unbind(1), spec.size, spec.interpolation,
                        flip=params["flip"])


def colour(x: torch.Tensor, spec: ViewSpec, params: Params) -> torch.Tensor:
    """Float [B, 3, S, S] in [0, 1] -> the same after jitter, grayscale, blur, solarize.
    Differentiable in params["jitter"]. An op that no sample of the batch draws is skipped
    where that is known for free (`may_any`): it would leave every value as it is."""
    if spec.jitter_p > 0 and spec.jitter_mode == "invclr":
        x = color_jitter_invclr(x, params["jitter"], params["jitter_on"])
    elif spec.jitter_p > 0:
        x = color_jitter(x, params["jitter"], params["order"], params["jitter_on"], spec.hue > 0)
    if spec.grayscale_p > 0 and may_any(params["gray"]):
        x = select(_per_sample(params["gray"].to(x.dtype)), rgb_to_grayscale(x).expand_as(x), x)
    if spec.blur_p > 0 and may_any(params["blur_sigma"] > 0):
        x = gaussian_blur(x, spec.blur_kernel_size, params["blur_sigma"])
    if spec.solarize_p > 0 and may_any(params["solarize"]):
        x = solarize(x, spec.solarize_threshold, params["solarize"])
    return x


def may_any(mask: torch.Tensor) -> bool:
    """mask.any() where reading it is free: a CPU tensor outside torch.compile. Elsewhere
    True, so the op runs (a GPU would wait for the answer; compile would break its graph).
    On a CPU, where the worker colours a few images at a time (in_chunks), a third of the
    ops are no sample's: skipped, the colour ops took 40% less time."""
    if mask.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return bool(mask.any())


def color_jitter(x: torch.Tensor, jitter: torch.Tensor, order: torch.Tensor,
                 apply: torch.Tensor, with_hue: bool = True) -> torch.Tensor:
    """ColorJitter on the samples where `apply` [B], each in its own order [B, 4].

    jitter [B, 4]: brightness, contrast, saturation factors and the hue shift (turns).
    Brightness, contrast and saturation are blends f*x + (1-f)*target (target 0,
    the image's mean gray, the pixel's gray); hue goes through HSV. Every sample's
    order is split around its hue: up to three blend stages before it, one HSV
    pass over the batch, up to three blend stages after. Samples whose op at a
    stage lies on the other side of the hue, or that are not jittered, get factor 1
    there (identity)."""
    hue_pos = (order == HUE).long().argmax(dim=1)     # where the hue sits in each order
    for k in range(3):                                # blends before the hue
        x = _blend_stage(x, order[:, k], jitter, active=(k < hue_pos) & apply)
    if with_hue and (may_any(apply) or _differentiated(jitter)):
        x = select(_per_sample(apply.to(x.dtype)), adjust_hue(x, jitter[:, HUE]), x)
    for k in range(1, 4):                             # blends after the hue
        x = _blend_stage(x, order[:, k], jitter, active=(k > hue_pos) & apply)
    return x


# ITU-R 601 RGB <-> YIQ, as the invariance-by-gradient reproduction's hue rotation
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.321), (0.211, -0.523, 0.311))
_RGB = ((1.0, 0.956, 0.621), (1.0, -0.272, -0.647), (1.0, -1.107, 1.705))
INVCLR_GRAY = (0.299, 0.587, 0.114)


def color_jitter_invclr(x: torch.Tensor, jitter: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """The invariance-by-gradient reproduction's TensorColorJitter (data/augmentation.py):
    brightness, contrast, saturation, hue in that fixed order, each blend clamped to [0, 1],
    the hue as a rotation by 2 pi h of the I-Q plane of YIQ (no clamp after it), on the
    samples where `apply` (their RandomApply: a * T(x) + (1 - a) * x). Differentiable in
    jitter [B, 4] = (brightness, contrast, saturation, hue)."""
    b, c, s_, h = (jitter[:, k].view(-1, 1, 1, 1) for k in range(4))
    w = torch.tensor(INVCLR_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    y = (x * b).clamp(0, 1)
    gray = (y * w).sum(1, keepdim=True)
    y = (y * c + gray.mean(dim=(2, 3), keepdim=True) * (1 - c)).clamp(0, 1)
    gray = (y * w).sum(1, keepdim=True)
    y = (y * s_ + gray * (1 - s_)).clamp(0, 1)
    phi = 2 * torch.pi * h.view(-1)
    cos, sin = torch.cos(phi), torch.sin(phi)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                       torch.stack([zero, sin, cos], -1)], -2)                       # [B, 3, 3]
    to_yiq = torch.tensor(_YIQ, dtype=x.dtype, device=x.device)
    to_rgb = torch.tensor(_RGB, dtype=x.dtype, device=x.device)
    m = to_rgb @ rot @ to_yiq                                                          # [B, 3, 3]
    y = torch.einsum("bij,bjhw->bihw", m, y)
    return select(_per_sample(apply.to(x.dtype)), y, x)


def _blend_stage(x, op, factors, active):
    """One stage: each active sample [B] blends with the target of its op [B]:
    brightness (0) -> 0, contrast (1) -> its mean gray, saturation (2) -> gray. factors
    [B, >=3]; the others keep factor 1. The gray, its mean and the stage itself are computed
    only when a sample needs them (may_any); without them the target is 0, as it is for
    those samples anyway. Nothing is skipped while autograd records through the factors
    (_differentiated)."""
    def needed(mask):
        return may_any(mask) or _differentiated(factors)
    if not needed(active):
        return x
    factor = torch.ones_like(factors[:, 0])
    for k in range(3):
        factor = torch.where((op == k) & active, factors[:, k], factor)
    f = _per_sample(factor)
    contrast, saturation = (op == CONTRAST) & active, (op == SATURATION) & active
    y = x.mul(f)
    if needed(contrast | saturation):
        gray = rgb_to_grayscale(x)
        # each term is 0 for the samples without that op, and x + 0 == x exactly
        target = (gray.mean(dim=(1, 2, 3), keepdim=True) * _per_sample(contrast.to(x.dtype))
                  if needed(contrast) else None)
        if needed(saturation):
            sat = gray * _per_sample(saturation.to(x.dtype))
            target = sat if target is None else sat + target
        y.add_(target * (1 - f))
    return y.clamp_(0, 1)


def _differentiated(t: torch.Tensor) -> bool:
    """Is autograd recording through t? Then the jitter's ops run even where no sample draws
    them: the gradient penalty's d view / d jitter is then zeros, not an error saying the
    jitter is not in the graph, and autograd sums the same paths in the same order as it
    always did (bench/fingerprint.py's invclr row: the same weights as before the skipping)."""
    return t.requires_grad and torch.is_grad_enabled()


class BatchNormalize:
    """The un-augmented path (evaluation, kNN, probes): uint8 -> normalised float,
    resized (bilinear) only when the stored size differs from `size`."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.normalize(x)


# On a CPU the colour ops are a dozen elementwise passes over the batch: over a whole
# batch of float images each pass streams the tensor through main memory, over a chunk
# that fits the core's cache they run at cache speed. Every op is per sample, so a chunk
# changes no value (tests/test_augment.py). Measured on a 2-core AMD EPYC, two 224 px
# views of 64 images (2026-12-02, before the ops below): 6.2 ms per view in chunks of 4
# images, 22.9 ms over the whole batch.
# 1 MiB rather than 2 since the colour ops skip what no image of a chunk draws (may_any):
# a 224 px chunk is then one image, and its colour ops took 0.77 instead of 1.08 ms a view
# (bench/stream.py at 224 px: 1.70x torchvision instead of 1.32x); at 96 px (9 images a
# chunk) and 32 px (85) the rate is the same within the noise.
CPU_CHUNK_BYTES = 1 << 20


def in_chunks(fn, x: torch.Tensor, params: Params, out_size: int,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fn(x, params) -> [B, 3, S, S], computed over cache-sized chunks of the batch on a CPU
    (the params sliced with it: each entry with B rows); in one call on other devices.
    `out`: a CPU buffer to write the result into (a DataLoader worker's shared memory)."""
    n = len(x)
    per = max(1, CPU_CHUNK_BYTES // (3 * out_size * out_size * 4))
    if x.device.type != "cpu" or n <= per:
        return fn(x, params) if out is None else out.copy_(fn(x, params))
    parts = (fn(x[a:a + per], {k: v[a:a + per] if torch.is_tensor(v) and v.dim() and
                               len(v) == n else v for k, v in params.items()})
             for a in range(0, n, per))
    first = next(parts)
    if first.requires_grad:                         # the gradient penalty's views: autograd's cat
        return torch.cat([first, *parts])
    if out is None:
        out = empty_huge((n, *first.shape[1:]), first.dtype)
    out[:per] = first
    for a, part in zip(range(per, n, per), parts):
        out[a:a + len(part)] = part
    return out


# A fresh CPU tensor of a few MB (one batch of 224 px float views is 38 MB) is a new mmap,
# and the first write to each 4 KB page faults: 0.28 ms of such a view, more than a third
# of its compiled colour ops (2-core AMD EPYC). Advised as transparent huge pages (2 MB), the
# same writes take 0.06 ms. Only these buffers, written whole at once, are advised: torch's
# global switch (THP_MEM_ALLOC_ENABLE) made small-model CPU training 28% slower.
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14


def empty_huge(shape, dtype) -> torch.Tensor:
    """torch.empty on the CPU, its whole 2 MB pages advised as huge pages (Linux; elsewhere,
    or where madvise fails, a plain torch.empty)."""
    out = torch.empty(shape, dtype=dtype)
    start = -(-out.data_ptr() // _HUGE) * _HUGE
    end = (out.data_ptr() + out.numel() * out.element_size()) // _HUGE * _HUGE
    if end > start and _madvise is not None:
        _madvise(start, end - start, _MADV_HUGEPAGE)
    return out


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_madvise = _libc_madvise()


def apply_whole(images: torch.Tensor, spec: ViewSpec, params: Params,
                normalize: BatchNormalize) -> torch.Tensor:
    """uint8 [B, 3, H, W] and the parameters of B views -> float32 [B, 3, size, size],
    normalised, in one pass over the batch."""
    return normalize.normalize(colour(geometry(images, spec, params), spec, params))


def apply_params(images: torch.Tensor, spec: ViewSpec, params: Params,
                 normalize: BatchNormalize) -> torch.Tensor:
    """uint8 [B, 3, H, W] and the parameters of B views -> float32 [B, 3, size, size],
    normalised (in cache-sized chunks on a CPU)."""
    return in_chunks(lambda x, p: apply_whole(x, spec, p, normalize), images, params, spec.size)


class CompiledApply:
    """apply_params through torch.compile: inductor fuses the many elementwise passes of
    the colour ops (blends, clamps, the HSV round trip, where-masks) into a few loops over
    memory. Shapes are static per view group. The first failure (no working C++ or GPU
    compiler, an unsupported op) falls back to eager for good, with one warning.

    `whole(images, spec, params, normalize)` is compiled; `eager` (same arguments) is the
    fallback. The streaming pipeline passes its colour-only pair, and chunks=True: its
    224 px views are faster compiled over cache-sized chunks (2.8 against 3.8 ms a view on
    a 2-core AMD EPYC); 32 px views gain nothing from chunks."""

    def __init__(self, whole=None, eager=None, chunks: bool = False):
        self.whole, self.eager = whole or apply_whole, eager or apply_params
        self.chunks = chunks
        self.fn, self.failed = None, False

    def __call__(self, images, spec, params, normalize):
        if not self.failed:
            try:
                if self.fn is None:
                    self.fn = torch.compile(self.whole, dynamic=False)
                if self.chunks:
                    return in_chunks(lambda x, p: self.fn(x, spec, p, normalize), images,
                                     params, spec.size)
                return self.fn(images, spec, params, normalize)
            except Exception as e:          # noqa: BLE001 -- any compiler failure: eager
                self.failed = True
                log.warning("augment.compile: torch.compile failed (%s); augmenting in eager "
                            "mode", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return self.eager(images, spec, params, normalize)


class ViewMaker:
    """All the views of a batch: the view groups in order, `count` views each.

    `make(images, generator)` samples every view's parameters (group by group, view by
    view, in that order: the random stream is fixed by the specs) and applies them.
    Returns (views, params): lists with one entry per view. compile=True applies them
    through torch.compile (CompiledApply)."""

    def __init__(self, specs: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float],
                 compile: bool = False):
        self.specs = list(specs)
        self.normalize = BatchNormalize(self.specs[0].size, mean, std)
        self.spec_of_view = [s for s in self.specs for _ in range(s.count)]
        self.apply = CompiledApply() if compile else apply_params

    @property
    def num_views(self) -> int:
        return len(self.spec_of_view)

    def sample(self, n: int, height: int, width: int, generator, device) -> List[Params]:
        return [sample_params(s, n, height, width, generator, device) for s in self.spec_of_view]

    def make(self, images: torch.Tensor, generator: torch.Generator):
        """images uint8 [B, 3, H, W] -> (views [B, 3, S_v, S_v] float32 normalised, params).

        The parameters are drawn view by view; the views of one group are then made in one
        pass over [count * B] images (every op is per sample, so this changes no value)."""
        b, _, height, width = images.shape
        views, params = [], []
        for spec in self.specs:
            ps = [sample_params(spec, b, height, width, generator, images.device)
                  for _ in range(spec.count)]
            if spec.count == 1:
                views.append(self.apply(images, spec, ps[0], self.normalize))
            else:
                joined = {k: torch.cat([p[k] for p in ps]) for k in ps[0]}
                x = images.repeat(spec.count, 1, 1, 1)
                views.extend(self.apply(x, spec, joined, self.normalize).split(b))
            params.extend(ps)
        return views, params

    def draw_jitter(self, view: int, m: int, n: int, generator, device) -> torch.Tensor:
        """[m, n, 4] fresh jitter factors of view `view`'s group."""
        return draw_jitter(self.spec_of_view[view], m, n, generator, device)

    def replay(self, images: torch.Tensor, view: int, params: Params) -> torch.Tensor:
        """View `view` re-made from (possibly changed) parameters: differentiable in
        params["jitter"] when it requires grad."""
        return apply_params(images, self.spec_of_view[view], params, self.normalize)


class BatchAugment(BatchNormalize):
    """One view of a batch with one spec: `augment(images, generator)`. Kept for the
    benchmarks and tests that augment without a ViewMaker."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], **fields):
        super().__init__(size, mean, std)
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            if key in fields:
                fields[key] = tuple(fields[key])
        self.spec = ViewSpec(size=size, **fields)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images uint8 [B, 3, H, W] -> float32 [B, 3, size, size], normalised."""
        b, _, height, width = images.shape
        p = sample_params(self.spec, b, height, width, generator, images.device)
        return apply_params(images, self.spec, p, self)
