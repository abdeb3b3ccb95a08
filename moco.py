"""MoCo v2 pretraining with the original MoCo-on-CIFAR command-line names.

    python moco.py backbone=resnet18 batch_size=256 moco_k=4096 moco_t=0.2
    python moco.py dataset=spirograph backbone.width=16 epochs=5        # no download

moco_k, moco_t and moco_m are the original names of method.queue_size, loss.temperature
and method.momentum; given on the command line they win over any preset.
Outputs go to Hydra's run directory (outputs/moco/<date>_<time>/).
"""
import hydra

from sslcifar.cli import check_overrides, pin_torchrun_run_dir, rename_aliases, report_user_errors
from sslcifar.train import train

ALIASES = {"moco_k": "method.queue_size", "moco_t": "loss.temperature", "moco_m": "method.momentum"}


@hydra.main(version_base="1.3", config_path="conf", config_name="moco")
@report_user_errors
def main(cfg):
    return train(cfg)


if __name__ == "__main__":
    rename_aliases(ALIASES)
    check_overrides("moco")
    pin_torchrun_run_dir()
    main()
