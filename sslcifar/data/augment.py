"""Batched SimCLR / MoCo v2 augmentation of uint8 images, on their own device.

torchvision augments one PIL image at a time in DataLoader workers; here a whole
batch [B, 3, H, W] is augmented at once with tensor operations and per-sample
random parameters drawn from a `torch.Generator`. The semantics follow
torchvision's transforms, in SimCLR's order:

    RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter, p)
    -> RandomGrayscale -> RandomApply(GaussianBlur, p) -> RandomSolarize -> Normalize

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

Same generator state, same output: the trainer reseeds per step for exact resume.
"""
import math
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
    # central fallback when no attempt fits
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    ok = valid.any(dim=1)
    top = torch.where(ok, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(ok, left, torch.full_like(left, (width - fw) // 2))
    h = torch.where(ok, h, torch.full_like(h, fh))
    w = torch.where(ok, w, torch.full_like(w, fw))
    return top.long(), left.long(), h.long(), w.long()


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


def adjust_hue(images: torch.Tensor, hue_factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by hue_factor [B] (in turns, |h| <= 0.5) through HSV, exactly as
    torchvision's tensor op (max channel decides the hue's sector, ties r > g > b)."""
    r, g, b = images.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)               # chroma = v * saturation
    safe_c = torch.where(c == 0, torch.ones_like(c), c)
    # hue in sixths of a turn, by which channel is the maximum (0 for grays: r-g-b diffs are 0)
    h6 = torch.where(v == r, (g - b) / safe_c,
                     torch.where(v == g, (b - r) / safe_c + 2, (r - g) / safe_c + 4))
    h6 = torch.remainder(h6 + 6 * _per_sample(hue_factor).squeeze(1), 6)       # [B, H, W]
    # HSV -> RGB without sector tables: channel n (R=5, G=3, B=1) is
    # v - c * clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6; this equals
    # torchvision's (v, q, p, t) selection sector by sector
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6)
        out.append(v - c * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(out, dim=1)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
    return torch.where(_per_sample(mask) & (images >= threshold), 1 - images, images)


# ---------------------------------------------------------------------- the pipeline

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


class BatchAugment(BatchNormalize):
    """Batched SimCLR/MoCo-v2 augmentation of uint8 images on their own device."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *,
                 crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), interpolation="bilinear",
                 flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                 grayscale_p=0.2, blur_p=0.0, blur_kernel_size=3, blur_sigma=(0.1, 2.0),
                 solarize_p=0.0, solarize_threshold=0.5):
        super().__init__(size, mean, std)
        self.crop_scale, self.crop_ratio, self.interpolation = crop_scale, crop_ratio, interpolation
        self.flip_p, self.jitter_p, self.grayscale_p = flip_p, jitter_p, grayscale_p
        self.jitter = (brightness, contrast, saturation)
        self.hue = hue
        self.blur_p, self.blur_kernel_size, self.blur_sigma = blur_p, blur_kernel_size, blur_sigma
        self.solarize_p, self.solarize_threshold = solarize_p, solarize_threshold

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images uint8 [B, 3, H, W] -> float32 [B, 3, size, size], normalised."""
        b, _, height, width = images.shape
        dev = images.device
        rand = lambda *shape: torch.rand(*shape, generator=generator, device=dev)  # noqa: E731
        x = images.float().div_(255)
        box = sample_crop_boxes(b, height, width, self.crop_scale, self.crop_ratio, generator, dev)
        x = resized_crop(x, *box, self.size, self.interpolation, flip=rand(b) < self.flip_p)
        if self.jitter_p > 0:
            x = self._color_jitter(x, rand(b) < self.jitter_p, rand(b, 4), rand(b, 4), generator)
        if self.grayscale_p > 0:
            x = torch.where(_per_sample(rand(b) < self.grayscale_p),
                            rgb_to_grayscale(x).expand_as(x), x)
        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * rand(b)
            x = gaussian_blur(x, self.blur_kernel_size,
                              torch.where(rand(b) < self.blur_p, sigma, torch.zeros_like(sigma)))
        if self.solarize_p > 0:
            x = solarize(x, self.solarize_threshold, rand(b) < self.solarize_p)
        return self.normalize(x)

    def _color_jitter(self, x, apply, factors_u, order_u, generator):
        """ColorJitter on the samples where `apply`, each with its own random order.

        Brightness, contrast and saturation are blends f*x + (1-f)*target (target 0,
        the image's mean gray, the pixel's gray); hue goes through HSV. Every sample's
        order is split around its hue: up to three blend stages before it, one HSV
        pass over the batch, up to three blend stages after. Samples whose op at a
        stage lies on the other side of the hue get factor 1 there (identity)."""
        ranges = [(max(0.0, 1 - s), 1 + s) for s in self.jitter]
        f = torch.stack([lo + (hi - lo) * factors_u[:, k] for k, (lo, hi) in enumerate(ranges)], 1)
        f = torch.where(apply[:, None], f, torch.ones_like(f))                     # [B, 3]
        hue = (2 * factors_u[:, 3] - 1) * self.hue
        order = order_u.argsort(dim=1)                 # a uniform random permutation of 0..3
        hue_pos = (order == 3).long().argmax(dim=1)    # 0 brightness, 1 contrast, 2 saturation, 3 hue
        for k in range(3):                             # blends before the hue
            x = self._blend_stage(x, order[:, k], f, active=k < hue_pos)
        if self.hue > 0:
            x = torch.where(_per_sample(apply), adjust_hue(x, hue), x)
        for k in range(1, 4):                          # blends after the hue
            x = self._blend_stage(x, order[:, k], f, active=k > hue_pos)
        return x

    @staticmethod
    def _blend_stage(x, op, factors, active):
        """One stage: each active sample blends with the target of its op:
        brightness (0) -> 0, contrast (1) -> its mean gray, saturation (2) -> gray."""
        factor = torch.ones_like(factors[:, 0])
        for k in range(3):
            factor = torch.where((op == k) & active, factors[:, k], factor)
        use_mean = _per_sample(((op == 1) & active).to(x.dtype))
        use_gray = _per_sample(((op == 2) & active).to(x.dtype))
        gray = rgb_to_grayscale(x)
        target = gray * use_gray + gray.mean(dim=(1, 2, 3), keepdim=True) * use_mean
        f = _per_sample(factor)
        return x.mul(f).add_(target * (1 - f)).clamp_(0, 1)
