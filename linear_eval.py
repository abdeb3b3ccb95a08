"""Linear evaluation of a frozen pretrained encoder (top-1/top-5, or R^2 on Spirograph).

    python linear_eval.py backbone=resnet18                         # newest resnet18 run in outputs/
    python linear_eval.py pretrained=outputs/simclr/<date>_<time>   # a run directory or a .pt file
    python linear_eval.py pretrained=PATH recipe=fast               # L-BFGS on cached features: seconds
    python linear_eval.py pretrained=moco_checkpoint.pth.tar        # MoCo/SogCLR/SupContrast/torchvision

Outputs go to Hydra's run directory (outputs/linear_eval/<date>_<time>/):
linear_eval.json and confusion_matrix.png.
"""
from sslcifar.cli import evaluate

if __name__ == "__main__":
    evaluate("linear_eval")
