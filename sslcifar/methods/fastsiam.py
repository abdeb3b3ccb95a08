"""FastSiam (Pototzky et al., 2022, "FastSiam: Resource-Efficient Self-supervised Learning
on a Single GPU"): SimSiam with four (or more) views, each view's prediction regressing the
mean of the other views' projections (`sslcifar.losses.fastsiam_loss`).

As lightly's benchmark `FastSiamModel` (lightly e8d317fc, docs/.../cifar10_benchmark.py):
SimSiam's network with a 2-layer projector whose last BatchNorm is affine (lightly's
ProjectionHead), one learning rate for every parameter (no fixed predictor lr).
"""
from ..distributed import gather, gather_with_grad
from ..losses import fastsiam_loss
from ..models import projection_mlp
from .base import register
from .simsiam import SimSiam


@register
class FastSiam(SimSiam):
    name = "fastsiam"
    loss_name = "fastsiam"
    views = (2, None)

    @staticmethod
    def make_projector(in_dim: int, m):
        # lightly's ProjectionHead keeps the affine parameters of its last BatchNorm
        return projection_mlp(in_dim, m.proj_hidden_dim, m.proj_out_dim, m.proj_layers,
                              m.proj_bn, m.proj_last_bn, last_bn_affine=True)

    def forward(self, batch) -> dict:
        b, v = batch.views[0].shape[0], len(batch.views)
        h = self.encode(batch.views)                              # [V*B, F]
        z = self.projector(h)                                     # [V*B, D]
        p = self.predictor(z)
        per_image = lambda t: t.view(v, b, -1).transpose(0, 1).contiguous()   # noqa: E731  [B, V, D]
        loss = fastsiam_loss(gather_with_grad(per_image(p)), gather(per_image(z.detach())))
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
