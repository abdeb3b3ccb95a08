"""MAE's pieces (sslcifar.losses.reconstruction) against naive versions written here from the
authors' code (facebookresearch/mae models_mae.py, util/pos_embed.py), and the masked
encoder through the real method."""
import math

import numpy as np
import pytest
import torch

from sslcifar.losses import mae_loss, patchify, random_masking, sincos_pos_embed_2d


def test_patchify_is_row_major_patches_of_row_column_channel_pixels():
    x = torch.randn(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                patch = x[n, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)
                assert torch.equal(p[n, 2 * i + j], patch)


@pytest.mark.parametrize("norm", [True, False])
def test_mae_loss_is_the_mean_error_of_the_masked_patches(norm):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 5, generator=g) < 0.6).double()
    mask[0, 0] = 1.0
    total, count = 0.0, 0
    for n in range(3):
        for l in range(5):
            if mask[n, l]:
                t = target[n, l]
                if norm:
                    mean = sum(t) / 12
                    var = sum((v - mean) ** 2 for v in t) / 11
                    t = (t - mean) / math.sqrt(var + 1e-6)
                total = total + ((pred[n, l] - t) ** 2).mean()
                count += 1
    ours = mae_loss(pred, target, mask, norm)
    assert ours.item() == pytest.approx((total / count).item(), rel=1e-12)
    g1, = torch.autograd.grad(ours, pred)
    g2, = torch.autograd.grad(total / count, pred)
    torch.testing.assert_close(g1, g2)
    assert torch.all(g1[mask == 0] == 0)            # the visible patches do not count


def test_random_masking_keeps_a_quarter_and_restores_the_order():
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = random_masking(4, 16, 0.75, g)
    assert keep.shape == (4, 4) and mask.shape == (4, 16)
    assert torch.all(mask.sum(1) == 12)
    for n in range(4):
        assert set(keep[n].tolist()) == set((mask[n] == 0).nonzero().flatten().tolist())
    shuffle = restore.argsort(1)
    assert torch.equal(shuffle.gather(1, restore), torch.arange(16).expand(4, 16))
    again = random_masking(4, 16, 0.75, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((keep, mask, restore), again))


def _mae_sincos(dim, grid):
    """util/pos_embed.py's get_2d_sincos_pos_embed(dim, grid, cls_token=True), in numpy."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gh, gw = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("dim, grid", [(32, 4), (192, 8)])
def test_sincos_position_embeddings_are_maes(dim, grid):
    ours = sincos_pos_embed_2d(dim, grid)
    assert ours.shape == (1 + grid * grid, dim)
    np.testing.assert_allclose(ours.numpy(), _mae_sincos(dim, grid), atol=1e-6)


def test_the_encoder_never_sees_the_masked_patches():
    """Changing the pixels of a masked patch leaves the latent unchanged; a kept one's not."""
    from sslcifar.data.batch import Batch
    from sslcifar.methods import build_method
    from sslcifar.schedule import Now

    from .conftest import method_overrides
    from .test_config import compose_cfg
    cfg = compose_cfg("simclr", [*method_overrides("mae"), "dataset.size=16"])
    torch.manual_seed(0)
    m = build_method(cfg, 16, 10).eval()
    x = torch.randn(2, 3, 16, 16)
    g = torch.Generator().manual_seed(5)
    keep, mask, _ = random_masking(2, 16, 0.75, g)
    base = m._encode_masked(x, keep)
    hidden = int((mask[0] == 1).nonzero()[0])
    shown = int(keep[0, 0])
    for patch, changes in ((hidden, False), (shown, True)):
        y = x.clone()
        r, c = divmod(patch, 4)
        y[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0
        out = m._encode_masked(y, keep)
        assert torch.equal(out[1], base[1])
        assert (not torch.allclose(out[0], base[0])) == changes
    out = m(Batch([x], torch.arange(2), torch.zeros(2, dtype=torch.long), now=Now(step=3)))
    assert out["loss"].item() > 0 and out["features"].shape == (2, 32)
