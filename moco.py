"""MoCo v2 pretraining with the original MoCo-on-CIFAR command-line names.

    python moco.py backbone=resnet18 batch_size=256 moco_k=4096 moco_t=0.2
    python moco.py dataset=spirograph backbone.width=16 epochs=5        # no download

moco_k, moco_t and moco_m are the original names of method.queue_size, loss.temperature
and method.momentum (sslcifar.config.MOCO_ALIASES); given on the command line they win
over any preset. Outputs go to Hydra's run directory (outputs/moco/<date>_<time>/).
"""
from sslcifar.cli import pretrain

if __name__ == "__main__":
    pretrain("moco")
