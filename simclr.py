"""Self-supervised pretraining: SimCLR by default (SimCLR-CIFAR10's recipe); every other
method with method=NAME, every published recipe with experiment=NAME.

    python simclr.py backbone=resnet18                                   # SimCLR-CIFAR10 recipe
    python simclr.py experiment=demo                                     # Spirograph, 2 CPU minutes
    python simclr.py -m loss.temperature=0.1,0.5 batch_size=64,128      # a grid, one run dir each
    torchrun --nproc_per_node=4 simclr.py experiment=supcon_cifar10      # 4 GPUs

Outputs go to Hydra's run directory (outputs/simclr/<date>_<time>/). An installed package
runs the same as `python -m sslcifar simclr ...`.
"""
from sslcifar.cli import pretrain

if __name__ == "__main__":
    pretrain("simclr")
