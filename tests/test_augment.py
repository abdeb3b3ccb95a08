"""Batched augmentation against torchvision's functional ops, image by image, and
its random parameters against torchvision's distributions."""
import math
import random

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from sslcifar.data.augment import (BatchAugment, BatchNormalize, ViewMaker, ViewSpec, apply_params,
                                   sample_params)
from sslcifar.data.ops import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                               crop_box, gaussian_blur, hflip, resized_crop, rgb_to_grayscale,
                               sample_crop_boxes, select, solarize)

TOL = 1 / 255


def images(n=6, h=32, w=32, seed=0):
    """Random pixels, smooth gradients, and pure grays (hue edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x[0] = torch.stack([yy, xx, 1 - yy])
    x[1] = torch.full((3, h, w), 0.5)
    x[2, :, : h // 2] = x[2, :1, : h // 2]          # gray top half
    return x


def per_image(fn, x, *params):
    return torch.stack([fn(x[i], *[p[i].item() if torch.is_tensor(p) else p for p in params])
                        for i in range(len(x))])


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_colour_ops_equal_torchvision(shape):
    x = images(6, *shape)
    f = torch.tensor([0.0, 0.6, 1.0, 1.4, 0.3, 2.0])
    hue = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.3, 0.5])
    for ours, ref in [(adjust_brightness(x, f), per_image(TF.adjust_brightness, x, f)),
                      (adjust_contrast(x, f), per_image(TF.adjust_contrast, x, f)),
                      (adjust_saturation(x, f), per_image(TF.adjust_saturation, x, f)),
                      (adjust_hue(x, hue), per_image(TF.adjust_hue, x, hue)),
                      (rgb_to_grayscale(x).expand_as(x), per_image(TF.rgb_to_grayscale, x, 3))]:
        assert (ours - ref).abs().max() <= TOL


def test_flip_and_solarize_equal_torchvision():
    x = images()
    mask = torch.tensor([True, False, True, True, False, False])
    ref = torch.stack([TF.horizontal_flip(x[i]) if mask[i] else x[i] for i in range(6)])
    assert torch.equal(hflip(x, mask), ref)
    ref = torch.stack([TF.solarize(x[i], 0.5) if mask[i] else x[i] for i in range(6)])
    assert (solarize(x, 0.5, mask) - ref).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_resized_crop_equals_crop_then_interpolate(mode, shape):
    h, w = shape
    x = images(6, h, w)
    top = torch.tensor([0, 3, 0, 10, h - 1, 5])
    left = torch.tensor([0, 2, w - 1, 4, 0, 7])
    hh = torch.tensor([h, 10, h, 5, 1, 8])           # full image, thin, 1-pixel-wide edge cases
    ww = torch.tensor([w, 17, 1, 5, w, 3])
    ours = resized_crop(x, top, left, hh, ww, 32, mode)
    for i in range(6):
        crop = TF.crop(x[i], top[i].item(), left[i].item(), hh[i].item(), ww[i].item())
        ref = TF.resize(crop, [32, 32], interpolation=getattr(TF.InterpolationMode, mode.upper()),
                        antialias=False)
        assert (ours[i] - ref.clamp(0, 1)).abs().max() <= TOL, i
    flipped = resized_crop(x, top, left, hh, ww, 32, mode, flip=torch.ones(6, dtype=torch.bool))
    assert torch.allclose(flipped, ours.flip(-1), atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 5])
def test_gaussian_blur_equals_torchvision(kernel):
    x = images()
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.0])
    ours = gaussian_blur(x, kernel, sigma)
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [kernel, kernel], [sigma[i].item()] * 2)
        assert (ours[i] - ref).abs().max() <= TOL
    assert torch.equal(ours[5], x[5])                 # sigma 0: untouched


JITTER_ONLY = ViewSpec(size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                       jitter_p=0.8, grayscale_p=0.0)


def test_color_jitter_in_its_sampled_order_equals_torchvision_in_that_order():
    """The real two steps: sample_params draws factors, an order and the p=0.8 mask;
    apply_params applies them. Each image equals torchvision's four ops applied one by
    one in the sampled order, with the sampled factors."""
    x = (images(16) * 255).round().to(torch.uint8)
    p = sample_params(JITTER_ONLY, 16, 32, 32, torch.Generator().manual_seed(3), "cpu")
    ours = apply_params(x, JITTER_ONLY, p, BatchNormalize(32, [0.0] * 3, [1.0] * 3))
    assert p["jitter_on"].any() and not p["jitter_on"].all()
    for i in range(16):
        fb, fc, fs, hue = p["jitter"][i].tolist()
        assert 0.6 <= min(fb, fc, fs) and max(fb, fc, fs) <= 1.4 and abs(hue) <= 0.1
        ops = [lambda im: TF.adjust_brightness(im, fb), lambda im: TF.adjust_contrast(im, fc),
               lambda im: TF.adjust_saturation(im, fs), lambda im: TF.adjust_hue(im, hue)]
        ref = x[i].float() / 255
        if p["jitter_on"][i]:
            for k in p["order"][i].tolist():
                ref = ops[k](ref)
            assert (ours[i] - ref).abs().max() <= TOL, i
        else:
            assert torch.equal(ours[i], ref)          # not jittered: exactly unchanged


def test_the_sampled_jitter_orders_are_the_24_permutations_equally_often():
    p = sample_params(JITTER_ONLY, 24000, 8, 8, torch.Generator().manual_seed(4), "cpu")
    perms, counts = torch.unique(p["order"], dim=0, return_counts=True)
    assert len(counts) == 24 and counts.min() > 800 and counts.max() < 1200
    assert (perms.sort(dim=1).values == torch.arange(4)).all()


def test_sampling_then_applying_is_the_one_step_augmentation_and_replays_exactly():
    x = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
    spec = ViewSpec(size=24, count=2, blur_p=0.5, blur_kernel_size=3, solarize_p=0.3)
    maker = ViewMaker([spec, ViewSpec(size=16, count=1)], [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    views, params = maker.make(x, torch.Generator().manual_seed(9))
    assert [v.shape[-1] for v in views] == [24, 24, 16] and len(params) == 3
    assert set(params[0]) == {"box", "flip", "jitter_on", "jitter", "order", "gray", "blur_sigma",
                              "solarize"}
    one = BatchAugment(24, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], blur_p=0.5, blur_kernel_size=3,
                       solarize_p=0.3)
    # same stream, same view (a group's views are made in one pass over 2B images: per-sample
    # ops, so equal up to how a CPU's kernels order a sum; bit-equal on the machines seen)
    torch.testing.assert_close(one(x, torch.Generator().manual_seed(9)), views[0], rtol=0, atol=1e-6)
    for v in range(3):
        torch.testing.assert_close(maker.replay(x, v, params[v]), views[v], rtol=0, atol=1e-6)


def test_applying_is_differentiable_in_the_jitter_factors_like_finite_differences():
    """d view / d (brightness, contrast, saturation, hue) by autograd against central
    differences in float64 on a view whose clamps are inactive at these factors."""
    torch.manual_seed(0)
    x = (torch.rand(3, 3, 8, 8) * 150 + 50).to(torch.uint8)      # mid-range: no clamp active
    spec = ViewSpec(size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                    jitter_p=1.0, grayscale_p=0.0)
    p = sample_params(spec, 3, 8, 8, torch.Generator().manual_seed(1), "cpu")
    p["jitter"] = torch.tensor([[1.1, 0.9, 1.2, 0.03], [0.95, 1.05, 0.8, -0.02],
                                [1.02, 1.1, 1.1, 0.01]], dtype=torch.float64)
    norm = BatchNormalize(8, [0.0] * 3, [1.0] * 3)
    norm.mean, norm.std = norm.mean.double(), norm.std.double()
    weights = torch.randn(3, 3, 8, 8, dtype=torch.float64)

    def f(jitter):
        q = dict(p, jitter=jitter)
        xx = x.double()                      # float64 end to end
        from sslcifar.data.augment import colour
        return (colour(xx / 255, spec, q) * weights).sum()

    theta = p["jitter"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(theta), theta)
    eps = 1e-6
    numeric = torch.zeros_like(theta)
    for i in range(3):
        for k in range(4):
            d = torch.zeros_like(theta)
            d[i, k] = eps
            numeric[i, k] = (f(theta.detach() + d) - f(theta.detach() - d)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-6)
    assert (grad.abs() > 0).all()


@pytest.mark.parametrize("sampler", ["batched", "one_by_one"])
def test_crop_boxes_follow_torchvisions_distribution(sampler):
    """sample_crop_boxes (tensors, all attempts at once) and crop_box (the streaming
    workers' Python draw, one image at a time) against RandomResizedCrop.get_params."""
    n = 20000
    for (h, w), scale, ratio in [((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
                                 ((64, 96), (0.2, 1.0), (3 / 4, 4 / 3)),
                                 ((32, 32), (0.9, 1.0), (3.0, 4.0))]:       # mostly fallback
        if sampler == "batched":
            g = torch.Generator().manual_seed(0)
            top, left, hh, ww = sample_crop_boxes(n, h, w, scale, ratio, g, "cpu")
        else:
            rng = random.Random(0)
            top, left, hh, ww = torch.tensor([crop_box(h, w, scale, ratio, rng) for _ in range(n)]).T
        torch.manual_seed(0)
        ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, h, w), scale, ratio)
                            for _ in range(n)], dtype=torch.float64)
        ours = torch.stack([top, left, hh, ww], 1).double()
        assert (hh >= 1).all() and (top + hh <= h).all() and (left + ww <= w).all()
        area_o, area_r = ours[:, 2] * ours[:, 3] / (h * w), ref[:, 2] * ref[:, 3] / (h * w)
        for a, b in [(area_o, area_r), (ours[:, 3] / ours[:, 2], ref[:, 3] / ref[:, 2]),
                     (ours[:, 0], ref[:, 0]), (ours[:, 1], ref[:, 1])]:
            assert abs(a.mean() - b.mean()) < 0.02 * max(1.0, b.mean().item()) + 3 * b.std() / math.sqrt(n)
            for q in (0.1, 0.5, 0.9):
                assert abs(a.quantile(q) - b.quantile(q)) <= 0.03 * max(1.0, b.quantile(q).item()) + 1
        full_o = ((ours[:, 2] == h) & (ours[:, 3] == w)).double().mean()
        full_r = ((ref[:, 2] == h) & (ref[:, 3] == w)).double().mean()
        assert abs(full_o - full_r) < 0.01


def test_random_choices_have_the_configured_rates_and_jitter_ranges():
    n = 4096
    x = (torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    aug = BatchAugment(8, [0.0] * 3, [1.0] * 3, crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0.3,
                       jitter_p=0.0, grayscale_p=0.25)
    out = aug(x, torch.Generator().manual_seed(2))
    src = x.float() / 255
    gray = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    # flips are counted among the samples that kept their colours
    flipped = (out - src.flip(-1)).abs().amax((1, 2, 3)) < 1e-6
    assert abs(flipped[~gray].float().mean() - 0.3) < 0.03
    assert abs(gray.float().mean() - 0.25) < 0.03
    # jitter: the share of changed samples
    aug = BatchAugment(8, [0.0] * 3, [1.0] * 3, crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0.0,
                       jitter_p=0.7, grayscale_p=0.0)
    out = aug(x, torch.Generator().manual_seed(3))
    changed = (out - src).abs().amax((1, 2, 3)) > 1e-6
    assert abs(changed.float().mean() - 0.7) < 0.03


def test_determinism_identity_and_output_format():
    x = (torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
    aug = BatchAugment(32, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], blur_p=0.5, solarize_p=0.2)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (16, 3, 32, 32)
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(8)))
    ident = BatchAugment(32, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], crop_scale=(1, 1), crop_ratio=(1, 1),
                         flip_p=0, jitter_p=0, grayscale_p=0)
    plain = BatchNormalize(32, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])(x)
    assert torch.allclose(ident(x, torch.Generator().manual_seed(0)), plain, atol=1e-5)
    stl = BatchAugment(24, [0.5] * 3, [0.5] * 3)(x, torch.Generator().manual_seed(0))
    assert stl.shape == (16, 3, 24, 24)


def naive_invclr_jitter(img, b, c, s, h):
    """The invariance reproduction's TensorColorJitter on one image [3, H, W], op by op."""
    gray = lambda x: 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]  # noqa: E731
    x = (img * b).clamp(0, 1)
    x = (x * c + gray(x).mean() * (1 - c)).clamp(0, 1)
    x = (x * s + gray(x)[None] * (1 - s)).clamp(0, 1)
    phi = 2 * math.pi * h
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]],
                       dtype=img.dtype)
    rgb = torch.tensor([[1, 0.956, 0.621], [1, -0.272, -0.647], [1, -1.107, 1.705]], dtype=img.dtype)
    rot = torch.tensor([[1, 0, 0], [0, math.cos(phi), -math.sin(phi)],
                        [0, math.sin(phi), math.cos(phi)]], dtype=img.dtype)
    return torch.einsum("ij,jhw->ihw", rgb @ rot @ yiq, x)


def test_the_invclr_jitter_is_the_reproductions_fixed_order_and_yiq_hue():
    from sslcifar.data.augment import color_jitter_invclr
    x = images(5).double()
    jitter = torch.tensor([[1.2, 0.8, 1.3, 0.05], [0.7, 1.1, 0.9, -0.08], [1.0, 1.0, 1.0, 0.0],
                           [0.9, 1.3, 0.6, 0.1], [1.4, 0.6, 1.1, -0.1]], dtype=torch.float64)
    apply = torch.tensor([True, True, True, True, False])
    ours = color_jitter_invclr(x, jitter, apply)
    for i in range(4):
        torch.testing.assert_close(ours[i], naive_invclr_jitter(x[i], *jitter[i].tolist()),
                                   rtol=1e-10, atol=1e-12)
    assert torch.equal(ours[4], x[4])
    # differentiable in the four factors (central differences, float64)
    theta = jitter.clone().requires_grad_()
    w = torch.randn_like(x)
    (grad,) = torch.autograd.grad((color_jitter_invclr(x, theta, apply) * w).sum(), theta)
    eps = 1e-6
    for i, k in [(0, 0), (1, 1), (3, 2), (0, 3), (3, 3)]:
        d = torch.zeros_like(jitter)
        d[i, k] = eps
        fd = ((color_jitter_invclr(x, jitter + d, apply) - color_jitter_invclr(x, jitter - d, apply))
              * w).sum() / (2 * eps)
        assert grad[i, k].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-7)
    assert torch.all(grad[4] == 0)                       # not jittered: no gradient


@pytest.mark.slow
def test_compiled_views_equal_the_eager_ones_to_rounding():
    """augment.compile=true: torch.compile of the apply step, for real (a C++ compiler is
    on every machine of this project); a failing compiler would fall back to eager."""
    x = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    spec = ViewSpec(size=12, count=2, blur_p=0.5, solarize_p=0.3)
    eager, _ = ViewMaker([spec], [0.5] * 3, [0.25] * 3).make(x, torch.Generator().manual_seed(1))
    maker = ViewMaker([spec], [0.5] * 3, [0.25] * 3, compile=True)
    compiled, _ = maker.make(x, torch.Generator().manual_seed(1))
    assert not maker.apply.failed
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size, n", [(32, 400), (96, 40)])
def test_views_made_in_cache_sized_chunks_equal_one_pass_over_the_batch(size, n):
    # on a CPU apply_params cuts the batch into chunks of CPU_CHUNK_BYTES (85 images of
    # 32 px, 9 of 96 px); every op is per sample, so the views are those of one pass
    from sslcifar.data.augment import CPU_CHUNK_BYTES, apply_whole
    assert n * 3 * size * size * 4 > 2 * CPU_CHUNK_BYTES          # several chunks, a ragged tail
    spec = ViewSpec(size=size, blur_p=0.5, solarize_p=0.3, grayscale_p=0.3)
    x = (images(n, 40, 40) * 255).to(torch.uint8)
    p = sample_params(spec, n, 40, 40, torch.Generator().manual_seed(1), "cpu")
    norm = BatchNormalize(size, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    chunked, whole = apply_params(x, spec, p, norm), apply_whole(x, spec, p, norm)
    # identical on the CPUs measured; the tolerance allows a vectorised kernel's scalar
    # tail to round one op differently (float32: a few ulps of values up to ~3)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    # and gradients flow through the chunks (the invariance penalty replays views)
    p = dict(p, jitter=p["jitter"].clone().requires_grad_())
    apply_params(x, spec, p, norm).sum().backward()
    assert p["jitter"].grad is not None and p["jitter"].grad.abs().sum() > 0


def test_select_is_torch_where_bit_for_bit():
    """The colour ops choose with select (a lerp by a 0/1 float mask: where is unvectorised on
    a CPU); for finite values it must return exactly where's values, per pixel and per sample."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 8, 8, generator=g) * 10.0 ** torch.randint(-30, 30, (4, 3, 8, 8), generator=g)
    b = torch.randn(4, 3, 8, 8, generator=g)
    for mask in (torch.rand(4, 3, 8, 8, generator=g) < 0.5, torch.tensor([True, False, True, False])):
        m = mask.view(-1, *[1] * (a.dim() - 1)) if mask.dim() == 1 else mask
        assert torch.equal(select(m.float(), a, b), torch.where(m, a, b))


def test_ops_no_sample_of_a_batch_draws_are_skipped_without_changing_a_value(monkeypatch):
    """On a CPU, colour() skips an op (a blend stage, the hue, grayscale, blur, solarize) that
    no sample of the batch draws. A skipped op is an exact identity: image by image (almost
    every op skipped for someone) the views are those of the batch, bit for bit those of the
    same calls with nothing skipped; and with no image jittered the gradient with respect to
    the jitter is zeros (the invariance penalty asks for it), not an error."""
    import sslcifar.data.augment as augment
    from sslcifar.data.augment import colour, sample_colour
    spec = ViewSpec(size=24, blur_p=0.5, solarize_p=0.3, grayscale_p=0.3)
    x = images(24, 24, 24)
    p = sample_colour(spec, 24, torch.Generator().manual_seed(2), "cpu")
    assert all(p[k].any() and not p[k].all() for k in ("jitter_on", "gray", "solarize"))

    def one_by_one():
        return torch.cat([colour(x[i:i + 1], spec, {k: v[i:i + 1] for k, v in p.items()})
                          for i in range(24)])
    skipped, whole = one_by_one(), colour(x, spec, p)
    torch.testing.assert_close(skipped, whole, rtol=0, atol=1e-6)   # the batch's kernels
    monkeypatch.setattr(augment, "may_any", lambda mask: True)        # as on a GPU: nothing skipped
    assert torch.equal(one_by_one(), skipped)
    monkeypatch.undo()
    jitter = p["jitter"].clone().requires_grad_()
    off = dict(p, jitter=jitter, jitter_on=torch.zeros(24, dtype=torch.bool))
    (grad,) = torch.autograd.grad(colour(x, spec, off).sum(), jitter)
    assert torch.equal(grad, torch.zeros_like(grad))
