"""MAE (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision Learners"): the pieces of
its masking and its loss, as the authors' code (facebookresearch/mae, models_mae.py) and
solo-learn's copy of it (solo/losses/mae.py, solo/backbones/vit/vit_mae.py at 9187ea3).
"""
from typing import Tuple

import torch

from .contrastive import _fp32


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, 3, H, W] -> [N, L, p*p*3]: row-major patches, each flattened (row, column,
    channel) as MAE's `patchify` ('nchpwq->nhwpqc')."""
    n, c, h, w = images.shape
    p = patch_size
    x = images.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def random_masking(n: int, length: int, mask_ratio: float, generator: torch.Generator,
                   device=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: each image keeps the int(L * (1 - ratio)) patches of
    smallest uniform noise.

    Returns:
        ids_keep [N, K] the kept patches (in noise order), mask [N, L] 1.0 where masked,
        ids_restore [N, L] the permutation that puts [kept, masked] back in patch order.
    """
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, generator=generator, device=device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], mask.gather(1, ids_restore), ids_restore


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             norm_pix_loss: bool = True) -> torch.Tensor:
    """Mean squared error on the masked patches.

        loss = sum_{n,l} mask_nl * mean_j (pred_nlj - t_nlj)^2 / sum_{n,l} mask_nl

    with t the target patch, normalised by its own mean and (unbiased) variance when
    norm_pix_loss: (x - mean) / sqrt(var + 1e-6), MAE's default for its best results.

    Args:
        pred: [N, L, P] the decoder's patches.
        target: [N, L, P] the image's patches (`patchify` of the normalised input view).
        mask: [N, L] 1.0 where the patch was masked (only those count).

    Returns:
        Scalar loss.
    """
    pred, target = _fp32(pred), _fp32(target)
    if norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine position embeddings [(1 +) grid*grid, dim]: half the
    channels encode the column, half the row, each as sin and cos of position / 10000^(2i/d)
    (get_2d_sincos_pos_embed); a zero row first for the class token."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, not {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    coords = torch.arange(grid, dtype=torch.float64)
    cols, rows = coords.repeat(grid), coords.repeat_interleave(grid)     # w varies fastest

    def embed(pos):
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    emb = torch.cat([embed(cols), embed(rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb])
    return emb.float()
