"""Batched SimCLR / MoCo v2 augmentation of uint8 images, on the images' own device.

torchvision augments one PIL image at a time in DataLoader workers. Here a whole
batch, uint8 [B, 3, H, W], is augmented at once with tensor operations and
per-sample random parameters drawn from a `torch.Generator`. The semantics follow
torchvision's transforms, in SimCLR's order:

    RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter, p)
    -> RandomGrayscale -> RandomApply(GaussianBlur, p) -> RandomSolarize -> Normalize

Every step is also a module-level function on float images in [0, 1], documented
with its shapes and tested one by one against torchvision's functional ops:

    sample_crop_boxes  boxes distributed exactly as RandomResizedCrop.get_params
    resized_crop       crop + bilinear/bicubic resize (+ optional horizontal flip)
    hflip, adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue,
    color_jitter (the four in a per-sample order), rgb_to_grayscale,
    gaussian_blur, solarize

How it stays exact and fast:
- Crop and resize are two separable passes (rows, then columns). Each output
  row is a weighted sum of 2 (bilinear) or 4 (bicubic) source rows *inside the
  crop*, with PyTorch's pixel-centre convention (`align_corners=False`), so the
  result equals `F.interpolate(img[..., t:t+h, l:l+w], size)` per image. One
  `embedding_bag` call does the gather and the weighted sum of a pass.
- Brightness, contrast and saturation are all blends `f * x + (1 - f) * target`
  (target 0, the image's mean gray, the pixel's gray), so one jitter stage does
  whichever of the three each sample has at that position of its order with one
  blend. Hue (an exact RGB -> HSV -> RGB round trip) runs only on the samples
  whose op at that stage is hue: every jittered sample pays for one HSV pass.
- Grayscale is a blend with factor 0 (saturation 0), the flip is folded into the
  crop's column weights, and a sample that is not jittered / blurred / solarized
  gets factor 1 / a delta kernel / no inversion, which leave it bit-for-bit unchanged.
- No host-device synchronisation on accelerators: every choice is a mask or a
  per-sample factor. On the CPU the hue stage reads its sample subset on the host
  (free there); elsewhere it shifts the whole batch and keeps the selected samples.

Same generator state, same output (bit for bit on a given device): the trainer
reseeds per step for exact resume.

Deviations from torchvision, all accepted on purpose:
- Resizing a crop *down* does not antialias: it equals torchvision's tensor op
  with `antialias=False` (PIL would antialias). CIFAR and STL-10 crops at their
  native size only ever upscale, where antialiasing changes nothing.
- Results agree with torchvision's tensor ops to float rounding (~1e-6), not bit
  for bit: the HSV round trip uses an equivalent closed form, and sums are
  accumulated in a different order.
- torchvision's per-image pipeline works on PIL uint8 images, rounding to 8 bits
  after every step; this pipeline stays in float32 from the crop to the end.
- Crop boxes are sampled in float32 (torchvision rounds Python doubles); a box
  can differ only when a side lands within ~1e-6 of a half-integer.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
CROP_ATTEMPTS = 10                     # RandomResizedCrop tries 10 boxes, then falls back
CUBIC_A = -0.75                        # PyTorch's (and OpenCV's) cubic convolution coefficient

# the four colour-jitter ops, as numbered in a per-sample order [B, 4]
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1], to scale each image of a [B, C, H, W] batch."""
    return values.view(-1, 1, 1, 1)


# ---------------------------------------------------------------------- crop

def sample_crop_boxes(n: int, height: int, width: int, scale: Sequence[float],
                      ratio: Sequence[float], generator: torch.Generator, device
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop boxes distributed as torchvision's `RandomResizedCrop.get_params`.

    Per sample, up to 10 attempts: area = H*W*U(scale), aspect = exp(U(log ratio)),
    w = round(sqrt(area*aspect)), h = round(sqrt(area/aspect)) (half to even, like
    Python's round); the first attempt with 0 < w <= W and 0 < h <= H is used, with
    top ~ randint(0, H-h+1), left ~ randint(0, W-w+1). Without one: the central
    crop of the largest box whose aspect lies within `ratio`.

    All attempts are drawn at once ([n, 10] uniforms, tiny) and the first valid one
    is picked, so there is no loop and no host sync.
    Returns (top, left, h, w), each int64 [n].
    """
    u = torch.rand(n, CROP_ATTEMPTS, 2, generator=generator, device=device)
    target_area = (height * width) * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))           # [n, 10]
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)   # argmax returns the first max
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # offsets uniform over the integers 0..H-h, as randint(0, H - h + 1); the clamp
    # guards against u * n rounding up to n in float32
    u = torch.rand(n, 2, generator=generator, device=device)
    top = torch.minimum(torch.floor(u[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u[:, 1] * (width - w + 1)), width - w)
    # torchvision's fallback when no attempt fits: central crop, aspect clamped to ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    found = fits.any(dim=1)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    h = torch.where(found, h, float(fh))
    w = torch.where(found, w, float(fw))
    return top.long(), left.long(), h.long(), w.long()


def _resample_taps(start: torch.Tensor, length: torch.Tensor, size: int, interpolation: str
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which source pixels, with which weights, resize a 1-D crop to `size` samples.

    start, length: int64 [n], the crop [start, start + length) of each sample.
    Returns index int64 [n, size, T] (absolute source positions, all inside the
    crop) and weight float32 [n, size, T]; T = 2 taps (bilinear) or 4 (bicubic).
    Mirrors PyTorch's upsample kernels: source coordinate (i + 0.5) * length / size
    - 0.5, clamped at 0 for bilinear; taps clamped to the crop's border.
    """
    length = length.to(torch.float32)[:, None]                              # [n, 1]
    dst = torch.arange(size, device=start.device, dtype=torch.float32)
    src = (dst + 0.5) * (length / size) - 0.5                               # [n, size]
    if interpolation == "bilinear":
        src = src.clamp_min(0)
        base = src.floor()
        lam = src - base
        weight = torch.stack([1 - lam, lam], dim=-1)
        offsets = torch.arange(0, 2, device=start.device)
    elif interpolation == "bicubic":
        base = src.floor()
        t = src - base
        # Keys' cubic convolution at distances 1 + t, t, 1 - t, 2 - t (PyTorch's order)
        a = CUBIC_A
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1                # noqa: E731  |d| <= 1
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a            # noqa: E731  1 < |d| < 2
        weight = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)
        offsets = torch.arange(-1, 3, device=start.device)
    else:
        raise ValueError(f"interpolation={interpolation!r}: use 'bilinear' or 'bicubic'")
    index = base.long()[..., None] + offsets                                 # [n, size, T]
    index = torch.minimum(index.clamp_min(0), length.long()[..., None] - 1) + start[:, None, None]
    return index, weight


def _resample_rows(images: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Resample along H: images [B, C, H, W], index/weight [B, S, T] -> [B, C, S, W].

    Output row i of image b, channel c is sum_t weight[b, i, t] * images[b, c, index[b, i, t]].
    `embedding_bag` (sum mode, per-sample weights) does exactly this gather and
    weighted sum over the image's rows, as one fused op.
    """
    b, c, h, w = images.shape
    s, taps = index.shape[1:]
    first_row = (torch.arange(b * c, device=images.device) * h).view(b, c, 1, 1)
    rows = (first_row + index[:, None]).view(-1, taps)                      # [B*C*S, T]
    weights = weight[:, None].expand(b, c, s, taps).reshape(-1, taps)
    out = F.embedding_bag(rows, images.reshape(b * c * h, w), mode="sum",
                          per_sample_weights=weights)
    return out.view(b, c, s, w)


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 h: torch.Tensor, w: torch.Tensor, size: int, interpolation: str = "bilinear",
                 flip: torch.Tensor = None) -> torch.Tensor:
    """Crop each image to its box and resize it to size x size.

    images float [B, C, H, W]; top, left, h, w int64 [B]; flip optional bool [B]
    (mirror those outputs horizontally, i.e. crop -> resize -> hflip).
    Returns float [B, C, size, size] equal, per image, to
    `F.interpolate(img[..., t:t+h, l:l+w], (size, size), mode, align_corners=False)`,
    i.e. torchvision's `resized_crop` with antialias=False (no antialiasing when a
    crop is larger than `size`). Bicubic output is clamped to [0, 1], as
    torchvision clamps it when converting back to an image.
    """
    rows_index, rows_weight = _resample_taps(top, h, size, interpolation)
    cols_index, cols_weight = _resample_taps(left, w, size, interpolation)
    if flip is not None:
        # mirroring the output = taking the output columns in reverse order
        flip = flip.view(-1, 1, 1)
        cols_index = torch.where(flip, cols_index.flip(1), cols_index)
        cols_weight = torch.where(flip, cols_weight.flip(1), cols_weight)
    x = _resample_rows(images, rows_index, rows_weight)                      # [B, C, S, W]
    # the column pass gathers rows too, of the transposed image (a gather along the
    # last dimension is several times slower than one transpose)
    x = _resample_rows(x.transpose(2, 3).contiguous(), cols_index, cols_weight)
    x = x.transpose(2, 3).contiguous()                                       # [B, C, S, S]
    return x.clamp_(0, 1) if interpolation == "bicubic" else x


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images [B, C, H, W] where mask (bool [B]) is set."""
    return torch.where(_per_sample(mask), images.flip(-1), images)


# ---------------------------------------------------------------------- colour

def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images: [B, 3, H, W] -> [B, 1, H, W]."""
    r, g, b = images.unbind(1)
    gray = torch.mul(r, GRAY_WEIGHTS[0])
    gray.add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])
    return gray.unsqueeze(1)


def _blend_(x: torch.Tensor, factor: torch.Tensor, op) -> torch.Tensor:
    """In place: x = clamp(f * x + (1 - f) * target, 0, 1), torchvision's _blend.

    x float [B, 3, H, W]; factor [B]; op: BRIGHTNESS, CONTRAST or SATURATION, or an
    int64 [B] of those (one per sample), choosing the target: 0, the image's mean
    gray, or each pixel's gray. A factor of exactly 1 leaves a sample unchanged bit
    for bit (x * 1 + 0); a factor of 0 with SATURATION gives exactly its grayscale.
    """
    keep = 1 - factor                                         # weight of the target
    op = torch.as_tensor(op, device=x.device)
    gray_weight = _per_sample(keep * (op == SATURATION))      # per-pixel gray target
    mean_weight = _per_sample(keep * (op == CONTRAST))        # mean-gray target
    target = rgb_to_grayscale(x)                              # [B, 1, H, W]
    mean = target.mean(dim=(2, 3), keepdim=True)
    target.mul_(gray_weight).addcmul_(mean, mean_weight)      # (1 - f) * target
    return x.mul_(_per_sample(factor)).add_(target).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] * factor [B], clamped to [0, 1]."""
    return _blend_(images.clone(), factor, BRIGHTNESS)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image [B, 3, H, W] with the mean of its grayscale by factor [B]."""
    return _blend_(images.clone(), factor, CONTRAST)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image [B, 3, H, W] with its own grayscale by factor [B]."""
    return _blend_(images.clone(), factor, SATURATION)


def adjust_hue(images: torch.Tensor, hue_factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of images [B, 3, H, W] by hue_factor [B] turns (|h| <= 0.5).

    The same map as torchvision's tensor adjust_hue (RGB -> HSV, h += factor mod 1,
    HSV -> RGB), in a closed form. With v = max, m = min, c = v - m of a pixel's
    channels and its hue H in turns, each output channel is m + c * T(H + shift),
    where T is the channel's trapezoid on the colour wheel (1 around its own
    primary, 0 around the opposite colour). Gray pixels (c = 0) stay as they are.
    """
    r, g, b = images.unbind(1)                                   # each [B, H, W]
    v = torch.maximum(torch.maximum(r, g), b)
    m = torch.minimum(torch.minimum(r, g), b)
    c = v - m                                                    # chroma
    # Hue in sixths of a turn, by the channel holding the maximum (ties go to red,
    # then green, as torchvision): red (g - b), green 2c + (b - r), blue 4c + (r - g),
    # all over c. Sector masks are 0/1 floats: float arithmetic beats torch.where.
    red = torch.eq(v, r, out=torch.empty_like(v))
    green = torch.eq(v, g, out=torch.empty_like(v))
    green.addcmul_(green, red, value=-1)                         # green max and not red
    gb, br = g - b, b - r
    blue_num = (c * 4).sub_(gb).sub_(br)                          # 4c + r - g
    green_num = torch.add(br, c, alpha=2)                        # 2c + b - r
    hue = gb.sub_(blue_num).mul_(red)                            # red * (red_num - blue_num)
    hue.add_(green_num.sub_(blue_num).mul_(green)).add_(blue_num)
    # in turns, shifted; + 2 keeps it positive (>= -2/3 - 2/3 before), so frac() wraps it
    hue.div_((c * 6).clamp_min_(1e-30)).add_(_per_sample(hue_factor).view(-1, 1, 1) + 2)
    # channel n's trapezoid: clamp(6 |frac(H - n/3) - 1/2| - 1, 0, 1), written so
    # that out = (m - c) + 6c * clamp(|frac(H - n/3) - 1/2|, 1/6, 1/3)
    wheel = hue[:, None] + torch.tensor([0.0, -1 / 3, -2 / 3], device=images.device).view(1, 3, 1, 1)
    wheel.frac_().sub_(0.5).abs_().clamp_(1 / 6, 1 / 3)
    return wheel.mul_((c * 6)[:, None]).add_((m - c)[:, None])


def _hue_stage_(x: torch.Tensor, hue_factor: torch.Tensor, selected: torch.Tensor) -> None:
    """In place: hue-shift the samples of x [B, 3, H, W] where selected (bool [B])."""
    if x.device.type == "cpu":
        # reading the mask on the host costs nothing on the CPU, and the HSV round
        # trip is the most expensive colour op: run it on the selected samples only
        rows = selected.nonzero().squeeze(1)
        if len(rows):
            x.index_copy_(0, rows, adjust_hue(x.index_select(0, rows), hue_factor.index_select(0, rows)))
    else:
        # no host sync on accelerators: shift every sample, keep the selected ones
        x.copy_(torch.where(_per_sample(selected), adjust_hue(x, hue_factor), x))


def _color_jitter_(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """In place version of `color_jitter`."""
    for stage in range(4):
        op = order[:, stage]                                     # [B] this stage's op per sample
        is_hue = op == HUE
        # blend samples: their op's factor; hue samples: factor 1 (unchanged here)
        blend_op = op.clamp(max=SATURATION)
        factor = torch.where(is_hue, 1.0, factors.gather(1, blend_op[:, None]).squeeze(1))
        _blend_(x, factor, blend_op)
        # a hue factor of 0 leaves a sample as it is without the HSV round trip
        _hue_stage_(x, factors[:, HUE], is_hue & (factors[:, HUE] != 0))
    return x


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with given per-sample factors and order.

    images float [B, 3, H, W] in [0, 1]; factors float [B, 4]: brightness, contrast,
    saturation factors (1 = no change) and hue shift (0 = no change); order int64
    [B, 4]: a permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE per sample, the
    order in which its four ops are applied (torchvision draws randperm(4) per image).
    Each op clamps to [0, 1] as torchvision's do. A sample with factors
    (1, 1, 1, 0) comes out bit-for-bit unchanged.

    Four stages: at stage k every sample applies its k-th op. Brightness, contrast
    and saturation samples share one blend (each with its own target); the hue
    samples skip the blend and go through HSV.
    """
    return _color_jitter_(images.clone(), factors, order)


# ---------------------------------------------------------------------- blur, solarize

def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma, as torchvision's tensor gaussian_blur.

    images [B, C, H, W]; kernel_size odd int; sigma [B] (same in x and y). Reflect
    padding, kernel exp(-x^2 / 2 sigma^2) normalised, applied separably (rows,
    then columns). A sigma of 0 leaves the sample bit-for-bit unchanged (delta kernel).
    """
    half = kernel_size // 2
    x = torch.linspace(-half, half, kernel_size, device=images.device)
    sig = sigma.to(torch.float32)[:, None]
    pdf = torch.exp(-0.5 * (x / sig.clamp_min(1e-12)) ** 2)
    kernel = pdf / pdf.sum(dim=1, keepdim=True)                        # [B, k]
    kernel = torch.where(sig > 0, kernel, (x == 0).to(torch.float32))  # delta where sigma 0
    height, width = images.shape[-2:]
    padded = F.pad(images, (half, half, half, half), mode="reflect")
    # weighted sums of shifted views: taps 0 * a + 1 * b + 0 * c are exactly b
    rows = sum(padded[:, :, t:t + height, :] * _per_sample(kernel[:, t]) for t in range(kernel_size))
    return sum(rows[:, :, :, t:t + width] * _per_sample(kernel[:, t]) for t in range(kernel_size))


def solarize(images: torch.Tensor, threshold: float, mask: torch.Tensor) -> torch.Tensor:
    """Invert pixels >= threshold (x -> 1 - x) in the images [B, C, H, W] where mask
    (bool [B]) is set, as torchvision's solarize on float images."""
    invert = torch.ge(images, threshold, out=torch.empty_like(images)).mul_(_per_sample(mask))
    # |x - 1| = 1 - x and |x - 0| = x exactly, for x in [0, 1]
    return invert.sub_(images).abs_()


# ---------------------------------------------------------------------- the pipeline

class BatchNormalize:
    """The un-augmented path (evaluation, kNN, linear probes).

    uint8 [B, 3, H, W] -> float32 [B, 3, size, size], (x / 255 - mean) / std; resized
    (bilinear, align_corners=False, no antialiasing, like the training crops) only
    when H, W differ from `size`.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def _normalize_(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(self.mean).div_(self.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self._normalize_(x)


class BatchAugment(BatchNormalize):
    """Batched SimCLR/MoCo-v2 augmentation of uint8 images on their own device.

    Arguments mirror torchvision's transforms: RandomResizedCrop(size, crop_scale,
    crop_ratio, interpolation), RandomHorizontalFlip(flip_p),
    RandomApply([ColorJitter(brightness, contrast, saturation, hue)], jitter_p),
    RandomGrayscale(grayscale_p), RandomApply([GaussianBlur(blur_kernel_size,
    blur_sigma)], blur_p), RandomSolarize(solarize_threshold, solarize_p) with the
    threshold on the [0, 1] scale, then Normalize(mean, std).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *,
                 crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), interpolation="bilinear",
                 flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                 grayscale_p=0.2, blur_p=0.0, blur_kernel_size=3, blur_sigma=(0.1, 2.0),
                 solarize_p=0.0, solarize_threshold=0.5):
        super().__init__(size, mean, std)
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation={interpolation!r}: use 'bilinear' or 'bicubic'")
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError("jitter strengths must be >= 0 and hue in [0, 0.5], got "
                             f"{(brightness, contrast, saturation, hue)}")
        if blur_kernel_size % 2 != 1:
            raise ValueError(f"blur_kernel_size={blur_kernel_size} must be odd")
        self.crop_scale, self.crop_ratio, self.interpolation = crop_scale, crop_ratio, interpolation
        self.flip_p, self.jitter_p, self.grayscale_p = flip_p, jitter_p, grayscale_p
        # factor ranges as ColorJitter's: [max(0, 1 - s), 1 + s], hue [-h, h]
        self.jitter_low = torch.tensor([max(0.0, 1 - s) for s in (brightness, contrast, saturation)]
                                       + [-hue])
        self.jitter_high = torch.tensor([1 + s for s in (brightness, contrast, saturation)] + [hue])
        self.blur_p, self.blur_kernel_size, self.blur_sigma = blur_p, blur_kernel_size, blur_sigma
        self.solarize_p, self.solarize_threshold = solarize_p, solarize_threshold

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images uint8 [B, 3, H, W] on any device -> float32 [B, 3, size, size], normalised.

        Random numbers come from `generator` only (on the images' device), always in
        the same order: crop attempts, crop offsets, flips, then each enabled step's.
        """
        b, _, height, width = images.shape
        dev = images.device
        uniform = lambda *shape: torch.rand(*shape, generator=generator, device=dev)  # noqa: E731
        box = sample_crop_boxes(b, height, width, self.crop_scale, self.crop_ratio, generator, dev)
        flip = uniform(b) < self.flip_p
        x = resized_crop(images.float().div_(255), *box, self.size, self.interpolation, flip=flip)
        if self.jitter_p > 0:
            jitter = uniform(b) < self.jitter_p
            low, high = self.jitter_low.to(dev), self.jitter_high.to(dev)
            factors = low + (high - low) * uniform(b, 4)                    # [B, 4]
            # samples left out: factors (1, 1, 1, 0) are exact no-ops
            factors = torch.where(jitter[:, None], factors, torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev))
            order = uniform(b, 4).argsort(dim=1)          # a uniform random permutation per sample
            _color_jitter_(x, factors, order)
        if self.grayscale_p > 0:
            # grayscale = saturation 0; factor 1 leaves the others exactly as they are
            _blend_(x, (uniform(b) >= self.grayscale_p).float(), SATURATION)
        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * uniform(b)
            x = gaussian_blur(x, self.blur_kernel_size, sigma * (uniform(b) < self.blur_p))
        if self.solarize_p > 0:
            x = solarize(x, self.solarize_threshold, uniform(b) < self.solarize_p)
        return self._normalize_(x)
