"""Backbones from timm (PyTorch Image Models), the optional extra `pip install -e '.[timm]'`.

Built without downloading weights (`pretrained=False`), the classifier removed
(`num_classes=0`), so `forward` gives the pooled features [B, num_features] as our ResNets
do (a ViT's class token after its last norm; ConvNeXt's and Swin's averaged map after
their norm), and `feature_map` / `pool` split it as `ResNet.feature_map` / `.pool` do
(timm's `forward_features` / `forward_head(pre_logits=True)`).

The named families and their small-image settings (`backbone.patch_size` null: from the
image size S, as solo-learn's CIFAR ViTs and the papers' sizes):
    vit_tiny / vit_small / vit_base   patch 4 (S <= 64), 8 (S <= 128), 16 above; width is
                                      the embedding size (192 / 384 / 768); position
                                      embeddings interpolated to every view size (timm's
                                      dynamic_img_size, as DINO's multi-crop)
    swin_tiny                         patch 4, window 4 (S <= 64: 8 x 8 tokens at 32 px) or 7
                                      (solo-learn's `swin_tiny(window_size=...)`); one size
                                      of view only (Swin's windows are fixed to it)
    convnext_tiny                     stem patch 1 (S <= 64: the ResNet CIFAR stem's
                                      resolutions 32-16-8-4), 2 (S <= 128), 4 above; width is
                                      the first stage's channels (96), the others 2x, 4x, 8x
    timm                              any timm model: backbone.timm_name, backbone.kwargs
"""
from typing import Any, Dict, Optional

import torch
from torch import nn

from .errors import UserError

# backbone.name -> its family (how width, patch size and image size enter timm's kwargs)
FAMILIES = {
    "vit_tiny": "vit", "vit_small": "vit", "vit_base": "vit",
    "swin_tiny": "swin", "convnext_tiny": "convnext", "timm": "timm",
}


def import_timm():
    try:
        import timm
    except ImportError:
        raise UserError("this backbone needs timm, which is not installed. Fix: pip install -e "
                        "'.[timm]' (or pip install timm), or a ResNet/WideResNet backbone") from None
    return timm


def default_patch_size(family: str, image_size: int) -> Optional[int]:
    """The patch (ViT, Swin) or stem stride (ConvNeXt) for images of image_size pixels."""
    if family == "vit":
        return 4 if image_size <= 64 else 8 if image_size <= 128 else 16
    if family == "convnext":
        return 1 if image_size <= 64 else 2 if image_size <= 128 else 4
    if family == "swin":
        return 4
    return None


class TimmBackbone(nn.Module):
    """A timm model as an encoder: forward(x) -> [B, num_features]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(fmap, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def no_weight_decay(self):
        """timm's names of the parameters that ViT recipes exempt from weight decay
        (position embeddings, class token), with this module's prefix."""
        names = getattr(self.model, "no_weight_decay", lambda: set())()
        return {f"model.{n}" for n in names}


def build_timm(name: str, width: int, image_size: int, patch_size: Optional[int],
               timm_name: Optional[str], kwargs: Dict[str, Any]) -> TimmBackbone:
    family = FAMILIES[name]
    timm = import_timm()
    if not timm_name:
        raise UserError(f"backbone={name} needs backbone.timm_name (a timm model name, e.g. "
                        f"resnet26d or vit_small_patch16_224). Fix: backbone.timm_name=NAME")
    args: Dict[str, Any] = dict(kwargs)
    patch = patch_size or default_patch_size(family, image_size)
    if family == "vit":
        args.update(img_size=image_size, patch_size=patch, embed_dim=width,
                    dynamic_img_size=True)
    elif family == "swin":
        args.setdefault("window_size", 4 if image_size <= 64 else 7)
        args.update(img_size=image_size, patch_size=patch, embed_dim=width)
    elif family == "convnext":
        args.update(patch_size=patch, dims=tuple(width * m for m in (1, 2, 4, 8)))
    try:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **args)
    except RuntimeError as e:      # an unknown model name
        raise UserError(f"backbone.timm_name={timm_name}: {e}. Fix: a name from "
                        f"timm.list_models()") from None
    return TimmBackbone(model)
