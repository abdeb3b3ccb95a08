"""TEMPORARY minimal augmentation (being replaced by the batched implementation)."""
import torch
import torch.nn.functional as F


class BatchNormalize:
    def __init__(self, size, mean, std):
        self.size = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images):
        x = images.float() / 255
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class BatchAugment(BatchNormalize):
    def __init__(self, size, mean, std, *, flip_p=0.5, **kw):
        super().__init__(size, mean, std)
        self.flip_p = flip_p

    def __call__(self, images, generator):
        x = super().__call__(images)
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.flip_p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)
