"""Features of un-augmented images through a frozen encoder: the one extraction that
kNN, linear evaluation, the supervised baseline's test accuracy and t-SNE share."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract(backbone: nn.Module, source, index: Optional[torch.Tensor] = None,
            batch_size: int = 512, normalize: bool = False, limit: Optional[int] = None,
            progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Features [N, F] (float32) of source.plain(index), BatchNorm in eval mode.

    index: [N] dataset indices (default: the first `limit` images, or all of them);
    normalize: L2-normalise each row (the kNN monitor's cosine similarity).
    The module is left in the mode (train/eval) it was found in.
    """
    if index is None:
        n = len(source) if limit is None else min(limit, len(source))
        index = torch.arange(n, device=source.device)
    was_training = backbone.training
    backbone.eval()
    out = []
    if hasattr(source, "plain_batches"):        # streamed from disk: one pass through workers
        batches = source.plain_batches(index, batch_size)
    else:
        batches = (source.plain(index[i:i + batch_size]) for i in range(0, len(index), batch_size))
    try:
        from tqdm import tqdm
        for x in tqdm(batches, total=-(-len(index) // batch_size), desc=desc,
                      disable=not progress, leave=False, dynamic_ncols=True):
            f = backbone(x).float()
            out.append(F.normalize(f, dim=1) if normalize else f)
    finally:
        backbone.train(was_training)
    return torch.cat(out)
