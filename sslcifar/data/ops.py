"""Batched image operations on float images in [0, 1], per-sample parameters as tensors.

The building blocks of `sslcifar.data.augment`: every function takes a batch
[B, C, H, W] and per-sample parameters [B] (or boxes [B] x 4), follows the
semantics of the torchvision op of the same name (tested against it image by image),
and makes no host-device synchronisation. The colour operations are differentiable
in their float factors (the invariance gradient penalty needs that). One exception:
`crop_box` draws a single box in plain Python, for the streaming pipeline's workers.
"""
import math
import random
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)      # ITU-R 601 luma, as torchvision's rgb_to_grayscale
CROP_ATTEMPTS = 10                         # torchvision's RandomResizedCrop tries 10 boxes
BICUBIC_A = -0.75                          # PyTorch's cubic convolution coefficient


# ---------------------------------------------------------------------- crop

def sample_crop_boxes(n: int, height: int, width: int, scale: Sequence[float],
                      ratio: Sequence[float], generator: torch.Generator, device
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop boxes distributed as torchvision's RandomResizedCrop.get_params draws them.

    Returns (top, left, h, w), each int64 [n]. All 10 attempts are drawn at once and
    the first valid one is kept; samples with none get the central fallback crop.
    """
    area = height * width
    r = torch.rand(n, CROP_ATTEMPTS, 4, generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * r[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * r[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))          # round half to even, as Python
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)    # first valid attempt
    pick = lambda t: t.gather(1, first).squeeze(1)               # noqa: E731
    w, h = pick(w), pick(h)
    # offsets uniform over the valid integer range, as randint(0, H - h + 1)
    top = torch.floor(pick(r[..., 2]) * (height - h + 1))
    left = torch.floor(pick(r[..., 3]) * (width - w + 1))
    fh, fw = _fallback_size(height, width, ratio)
    ok = valid.any(dim=1)
    top = torch.where(ok, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(ok, left, torch.full_like(left, (width - fw) // 2))
    h = torch.where(ok, h, torch.full_like(h, fh))
    w = torch.where(ok, w, torch.full_like(w, fw))
    return top.long(), left.long(), h.long(), w.long()


def _fallback_size(height: int, width: int, ratio: Sequence[float]) -> Tuple[int, int]:
    """RandomResizedCrop's central fallback (h, w) when no attempt fits: the whole image,
    cut to the nearest allowed aspect ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
             rng: random.Random) -> Tuple[int, int, int, int]:
    """One (top, left, h, w) crop box, drawn as RandomResizedCrop.get_params draws it
    (up to 10 attempts in turn, the first that fits, else the central fallback), from a
    Python random.Random: in a data-loading worker, one image at a time, this is ~20x
    cheaper than sample_crop_boxes' tensors for n=1 (0.01 against 0.26 ms a view)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))          # round half to even, as torchvision
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    h, w = _fallback_size(height, width, ratio)
    return (height - h) // 2, (width - w) // 2, h, w


def _cubic(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.75 at distance |t|."""
    a, t = BICUBIC_A, t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _resample_matrix(start: torch.Tensor, length: torch.Tensor, size: int, full: int,
                     interpolation: str) -> torch.Tensor:
    """[B, size, full] matrix M with M @ signal = the crop [start, start+length) of the
    signal resized to `size` samples (PyTorch's align_corners=False convention; taps
    clamped to the crop's border, so nothing outside the crop is read)."""
    b, device = start.shape[0], start.device
    length = length.to(torch.float32)[:, None]                                   # [B, 1]
    dst = torch.arange(size, device=device, dtype=torch.float32)[None]           # [1, S]
    src = (dst + 0.5) * (length / size) - 0.5                                    # [B, S]
    if interpolation == "bilinear":
        src = src.clamp_min(0)
        base = src.floor()
        offsets = torch.arange(0, 2, device=device, dtype=torch.float32)
        frac = (src - base)[..., None]
        weights = torch.where(offsets == 0, 1 - frac, frac)                       # [B, S, 2]
    elif interpolation == "bicubic":
        base = src.floor()
        offsets = torch.arange(-1, 3, device=device, dtype=torch.float32)
        weights = _cubic((src - base)[..., None] - offsets)                       # [B, S, 4]
    else:
        raise ValueError(f"interpolation {interpolation!r}: use bilinear or bicubic")
    taps = (base[..., None] + offsets).clamp(min=0)
    taps = torch.minimum(taps, length[..., None] - 1) + start[:, None, None]
    m = torch.zeros(b, size, full, device=device, dtype=torch.float32)
    return m.scatter_add_(2, taps.long(), weights)


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor,
                 w: torch.Tensor, size: int, interpolation: str = "bilinear",
                 flip: torch.Tensor = None) -> torch.Tensor:
    """images [B, C, H, W] float, per-sample boxes [B] -> [B, C, size, size], then
    flipped horizontally where the optional bool mask `flip` [B] is set.

    Equals `F.interpolate(img[..., t:t+h, l:l+w], size, mode, align_corners=False)` per
    image, computed as two small matrix products: rows then columns.
    """
    _, _, height, width = images.shape
    rows = _resample_matrix(top, h, size, height, interpolation)                # [B, S, H]
    cols = _resample_matrix(left, w, size, width, interpolation)                # [B, S, W]
    if flip is not None:       # a horizontal flip of the output = reversed output columns
        cols = torch.where(_per_sample(flip).squeeze(1), cols.flip(1), cols)
    # rows then columns as two plain batched matmuls (3x faster than broadcasting
    # the [B, S, H] matrix over the channels)
    b, ch = images.shape[:2]
    x = torch.bmm(rows, images.transpose(1, 2).reshape(b, height, ch * width))   # [B, S, C*W]
    x = x.view(b, size, ch, width).transpose(1, 2).reshape(b, ch * size, width)  # [B, C*S, W]
    out = torch.bmm(x, cols.transpose(1, 2)).view(b, ch, size, size)            # [B, C, S, S]
    return out.clamp_(0, 1) if interpolation == "bicubic" else out


# ---------------------------------------------------------------------- colour

def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    r, g, b = images.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 1, 1, 1)


def _blend(images, target, factor):
    """factor * image + (1 - factor) * target, clamped to [0, 1] (torchvision's _blend)."""
    f = _per_sample(factor)
    return (f * images + (1 - f) * target).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images[:, :1]), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, rgb_to_grayscale(images), factor)


def select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a where mask else b, for a float mask of 0s and 1s broadcastable to a and b: the values
    of torch.where(mask.bool(), a, b) exactly (for finite a, b), computed as torch.lerp(b, a,
    mask) (weight 0: b + 0 * (a - b) = b; weight 1: a - (a - b) * 0 = a), and differentiable
    as where is. Why not where: on a CPU, where and every op that writes a bool tensor run
    unvectorised: a where over 3 x 224 x 224 floats took 0.50 ms, a lerp 0.02 ms (2-core AMD
    EPYC, torch 2.14); on a GPU both are one fast kernel. Under torch.compile, where: inductor
    writes its own loop for either."""
    if torch.compiler.is_compiling():
        return torch.where(mask != 0, a, b)
    return torch.lerp(b, a, mask)


def mask_of(compare, a: torch.Tensor, b) -> torch.Tensor:
    """compare(a, b) (torch.eq, torch.ge, ...) as a float tensor of 0s and 1s shaped like a:
    written into a float output directly, 4x faster on a CPU than a bool result (see select).
    Under torch.compile a plain comparison, which inductor fuses (an out= buffer it would
    write to memory: the compiled colour ops took 0.79 instead of 0.51 ms a 224 px view)."""
    if torch.compiler.is_compiling():
        return compare(a, b).to(a.dtype)
    return compare(a, b, out=torch.empty_like(a))


def _wrap6(y: torch.Tensor) -> torch.Tensor:
    """y mod 6 for y in (-6, 12), value for value torch.remainder(y, 6): y + 6 below 0 (rounded
    once, as remainder's fmod(y, 6) + 6), y - 6 from 6 (exact on [6, 12)), y between. As float
    masks (3x faster than remainder on a CPU, and fused by torch.compile)."""
    return y.add(mask_of(torch.lt, y, 0), alpha=6).sub_(mask_of(torch.ge, y, 6), alpha=6)


def adjust_hue(images: torch.Tensor, hue_factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by hue_factor [B] (in turns, |h| <= 0.5) through HSV, exactly as
    torchvision's tensor op (max channel decides the hue's sector, ties r > g > b)."""
    r, g, b = images.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)               # chroma = v * saturation
    safe_c = c + mask_of(torch.eq, c, 0)                        # 1 where c == 0, else c
    # hue in sixths of a turn, by which channel is the maximum (0 for grays: r-g-b diffs are 0)
    h6 = select(mask_of(torch.eq, v, r), (g - b) / safe_c,
                select(mask_of(torch.eq, v, g), (b - r) / safe_c + 2, (r - g) / safe_c + 4))
    h6 = _wrap6(h6 + 6 * _per_sample(hue_factor).squeeze(1))                 # [B, H, W]
    # HSV -> RGB without sector tables: channel n (R=5, G=3, B=1) is
    # v - c * clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6; this equals
    # torchvision's (v, q, p, t) selection sector by sector
    out = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n                                                            # in [1, 12)
        k.sub_(mask_of(torch.ge, k, 6), alpha=6)
        out.append(v - c * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(out, dim=1)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the samples where mask [B]; any dtype (not on a hot path: crops flip inside
    resized_crop)."""
    return torch.where(_per_sample(mask), images.flip(-1), images)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, sigma [B] per sample, reflect padding (torchvision's).
    A sigma of 0 leaves the sample exactly unchanged."""
    b, c, hgt, wid = images.shape
    half = kernel_size // 2
    x = torch.linspace(-half, half, kernel_size, device=images.device)
    sig = sigma.to(images.dtype)[:, None]
    pdf = torch.exp(-0.5 * (x / sig.clamp_min(1e-12)) ** 2)
    kernel = pdf / pdf.sum(dim=1, keepdim=True)                                  # [B, k]
    delta = (x == 0).to(images.dtype).expand_as(kernel)
    kernel = torch.where(sig > 0, kernel, delta)
    kernel = kernel.repeat_interleave(c, dim=0)                                  # [B*C, k]
    x = F.pad(images.reshape(1, b * c, hgt, wid), (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)                     # vertical
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)                     # horizontal
    return x.view(b, c, hgt, wid)


def solarize(images: torch.Tensor, threshold: float, mask: torch.Tensor) -> torch.Tensor:
    return select(_per_sample(mask.to(images.dtype)) * mask_of(torch.ge, images, threshold),
                  1 - images, images)
