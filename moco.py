"""MoCo v2 pretraining with the original MoCo-on-CIFAR command-line names.

    python moco.py backbone=resnet18 batch_size=256 moco_k=4096 moco_t=0.2
    python moco.py dataset=spirograph backbone.width=16 epochs=5        # no download

Outputs go to Hydra's run directory (outputs/moco/<date>_<time>/).
"""
import hydra

from sslcifar.cli import check_overrides, pin_torchrun_run_dir, report_user_errors
from sslcifar.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="moco")
@report_user_errors
def main(cfg):
    return train(cfg)


if __name__ == "__main__":
    check_overrides("moco")
    pin_torchrun_run_dir()
    main()
