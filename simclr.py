"""Self-supervised pretraining: SimCLR by default; SogCLR, SupCon and the
supervised baseline with method=sogclr|supcon|supervised.

    python simclr.py backbone=resnet18                                   # SimCLR-CIFAR10 recipe
    python simclr.py experiment=demo                                     # Spirograph, 2 CPU minutes
    python simclr.py -m loss.temperature=0.1,0.5 batch_size=64,128      # a grid, one run dir each
    torchrun --nproc_per_node=4 simclr.py experiment=supcon_cifar10      # 4 GPUs

Outputs go to Hydra's run directory (outputs/simclr/<date>_<time>/).
"""
import hydra

from sslcifar.cli import check_overrides, pin_torchrun_run_dir, report_user_errors
from sslcifar.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="simclr")
@report_user_errors
def main(cfg):
    return train(cfg)


if __name__ == "__main__":
    check_overrides("simclr")
    pin_torchrun_run_dir()
    main()
