"""The online probe: a linear classifier trained on detached backbone features alongside
pretraining, with its own optimizer. Its accuracy on the training batches is logged as
`online_train_top1`; on the test split, at each end-of-epoch evaluation, as
`online_test_top1` (what solo-learn's tables report as "online linear": its online
classifier on the validation set)."""
import torch
import torch.nn.functional as F
from torch import nn


class OnlineProbe(nn.Module):
    """A linear classifier on detached backbone features, trained alongside
    pretraining with its own optimizer: no gradient reaches the backbone."""

    def __init__(self, num_features: int, num_classes: int, lr: float):
        super().__init__()
        self.fc = nn.Linear(num_features, num_classes)
        self.opt = torch.optim.Adam(self.fc.parameters(), lr=lr)

    def step(self, features: torch.Tensor, labels: torch.Tensor):
        """One update on the labelled images of the batch (label -1: STL-10's unlabeled
        split, left out). Returns (correct predictions made before it, labelled images)."""
        logits = self.fc(features.float())
        labelled = labels >= 0
        count = labelled.sum()
        # masked mean, not boolean indexing: no host-device sync, and a batch without
        # any label gives a zero loss instead of NaN
        loss = (F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * labelled).sum() \
            / count.clamp_min(1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return ((logits.argmax(1) == labels) & labelled).sum(), count

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 (%) on features [N, F] of labelled images (labels [N])."""
        correct = (self.fc(features.float()).argmax(1) == labels).float()
        return 100.0 * correct.mean().item()
