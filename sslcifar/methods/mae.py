"""MAE (He et al., CVPR 2022): a ViT encodes a random 25% of an image's patches, a small
transformer decoder predicts the pixels of the other 75%, and the loss is the squared error
on the masked patches, each normalised by its own mean and variance
(`sslcifar.losses.mae_loss`).

As solo-learn's MAE (solo/methods/mae.py, solo/backbones/vit/vit_mae.py at 9187ea3, from
facebookresearch/mae): the encoder's position embeddings are fixed 2-D sine-cosine ones
(the backbone's are overwritten and frozen), masking after the position embeddings with the
class token kept, a decoder of `decoder_depth` timm blocks of width `decoder_embed_dim` with
its own fixed sine-cosine embeddings and a learned mask token, predicting p*p*3 values per
patch of the normalised input view. One view per image (augment=reconstruction: crop and
flip only). The masks come from a generator seeded by (seed, step), drawn for the global
batch and sliced to each rank's images: resume and 2 processes stay exact. The online probe
reads the class token of the masked forward, as solo-learn's.
"""
from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from .. import distributed as dist
from ..losses import mae_loss, patchify, random_masking, sincos_pos_embed_2d
from ..ranges import declared
from .base import LossConfig, Method, MethodConfig, register, require


@dataclass
class MAEConfig(MethodConfig):
    mask_ratio: float = declared("[0, 1)")          # the share of patches the encoder never sees
    decoder_embed_dim: int = declared("[1, inf)")
    decoder_depth: int = declared("[1, inf)")
    decoder_num_heads: int = declared("[1, inf)")


@dataclass
class MAELossConfig(LossConfig):
    norm_pix_loss: bool = MISSING                    # targets normalised per patch


class MAEDecoder(nn.Module):
    """Latent [N, 1+K, D] and ids_restore [N, L] -> predicted patches [N, L, p*p*3]."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, num_patches: int,
                 patch_size: int):
        super().__init__()
        from timm.models.vision_transformer import Block
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        grid = int(round(num_patches ** 0.5))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid)[None], persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_size ** 2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():              # MAE's _init_weights
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        n, length = ids_restore.shape
        masked = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        rest = torch.cat([x[:, 1:], masked], dim=1)               # kept, then mask tokens
        rest = rest.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], rest], dim=1) + self.pos_embed
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


@register
class MAE(Method):
    name = "mae"
    loss_name = "mae"
    Config = MAEConfig
    Loss = MAELossConfig
    views = (1, 1)
    min_batch = (1, "")

    def __init__(self, backbone, decoder, mask_ratio: float, norm_pix_loss: bool, seed: int):
        super().__init__()
        self.backbone, self.decoder = backbone, decoder
        self.mask_ratio, self.norm_pix_loss, self.seed = mask_ratio, norm_pix_loss, seed

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "MAE":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        vit = backbone.model
        grid = vit.patch_embed.grid_size[0]
        with torch.no_grad():                 # MAE's encoder: fixed sine-cosine embeddings
            vit.pos_embed.copy_(sincos_pos_embed_2d(vit.embed_dim, grid)[None])
        vit.pos_embed.requires_grad_(False)
        decoder = MAEDecoder(vit.embed_dim, m.decoder_embed_dim, m.decoder_depth,
                             m.decoder_num_heads, grid * grid, vit.patch_embed.patch_size[0])
        return cls(backbone, decoder, m.mask_ratio, cfg.loss.norm_pix_loss, cfg.seed)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        require(cfg.backbone.name in ("vit_tiny", "vit_small", "vit_base"), "backbone",
                cfg.backbone.name, "MAE masks a ViT's patches: vit_tiny, vit_small or vit_base")
        require(view_sizes[0] == cfg.dataset.size, "augment.groups.0.size", view_sizes[0],
                f"MAE reconstructs views of the data set's size ({cfg.dataset.size} px)")

    def _encode_masked(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """The ViT on the kept patches only: [b, 1 + K, D] after its last norm."""
        vit = self.backbone.model
        tokens = vit._pos_embed(vit.patch_embed(x))      # [b, 1 + L, D], class token first
        cls, patches = tokens[:, :1], tokens[:, 1:]
        kept = patches.gather(1, ids_keep[..., None].expand(-1, -1, patches.shape[2]))
        return vit.norm(vit.blocks(vit.norm_pre(torch.cat([cls, kept], dim=1))))

    def forward(self, batch) -> dict:
        x = batch.views[0]
        b = x.shape[0]
        target = patchify(x, self.backbone.model.patch_embed.patch_size[0])   # [b, L, p*p*3]
        # the masks of the global batch, from (seed, step); this rank's rows
        g = torch.Generator(device=x.device).manual_seed(
            (self.seed * 1_000_003 + batch.now.step) % 2**63)
        r = dist.rank()
        ids_keep, mask, ids_restore = (t[r * b:(r + 1) * b] for t in random_masking(
            b * dist.world_size(), target.shape[1], self.mask_ratio, g, x.device))
        latent = self._encode_masked(x, ids_keep)
        pred = self.decoder(latent, ids_restore)
        loss = mae_loss(dist.gather_with_grad(pred), dist.gather(target), dist.gather(mask),
                        self.norm_pix_loss)
        features = latent[:, 0]
        return {"loss": loss, "features": features.detach(), "z_std": self.collapse_std(features)}
