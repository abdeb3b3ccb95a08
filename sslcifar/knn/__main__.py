"""`python -m sslcifar.knn`: the kNN evaluation of a saved encoder (the command-line layer).

    python -m sslcifar.knn pretrained=outputs/simclr/<date>_<time> [k=200 temperature=0.1]
"""
from typing import Dict

from . import knn_evaluate


def knn_from_config(cfg, run_dir) -> Dict[str, float]:
    """`python -m sslcifar.knn`: kNN of a pretrained encoder; writes knn.json to run_dir."""
    import json
    from pathlib import Path
    from ..data.sources import build_source
    from ..distributed import pick_device
    from ..errors import UserError
    from ..pretrained import load_encoder
    if cfg.k < 1 or cfg.temperature <= 0:
        raise UserError(f"k={cfg.k} temperature={cfg.temperature} are not allowed: "
                        f"k needs >= 1 and temperature > 0")
    if cfg.max_train is not None and cfg.max_train < 1:
        raise UserError(f"max_train={cfg.max_train} is not allowed: needs >= 1 or null")
    device = pick_device(cfg.device)
    enc = load_encoder(cfg)
    train_src = build_source(cfg, "train", device)
    test_src = build_source(cfg, "test", device)
    scores = knn_evaluate(enc.backbone.to(device), train_src, test_src, cfg.k, cfg.temperature,
                          cfg.max_train, cfg.batch_size)
    checkpoint = str(enc.path) if enc.path is not None else "random"
    n_train = len(train_src) if cfg.max_train is None else min(cfg.max_train, len(train_src))
    result = {**scores, "checkpoint": checkpoint, "checkpoint_format": enc.format,
              "backbone": {"name": enc.name, "width": enc.width, "stem": enc.stem},
              "dataset": cfg.dataset.name, "k": cfg.k, "temperature": cfg.temperature,
              "num_train": n_train, "num_test": len(test_src)}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "knn.json").write_text(json.dumps(result, indent=2))
    score = (f"top1={scores['knn_top1']:.2f}" if "knn_top1" in scores
             else f"r2={scores['knn_r2']:.4f}")
    print(f"knn: {score} (k={cfg.k}, T={cfg.temperature:g}, {checkpoint})", flush=True)
    return result


def main() -> None:
    """python -m sslcifar.knn pretrained=PATH [dataset=... backbone=... k=200 temperature=0.1]"""
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from ..cli import check_overrides, report_user_errors
    from ..eval_config import register_eval_configs
    register_eval_configs()
    check_overrides("knn")

    @hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[2] / "conf"),
                config_name="knn")
    @report_user_errors
    def run(cfg):
        return knn_from_config(cfg, Path(HydraConfig.get().runtime.output_dir))
    run()


if __name__ == "__main__":
    main()
