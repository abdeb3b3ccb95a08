"""`python -m sslcifar.figures tsne|curves`: the figures of a saved encoder or run
(the command-line layer).

    python -m sslcifar.figures tsne pretrained=outputs/simclr/<date>_<time>
    python -m sslcifar.figures curves outputs/simclr/<date>_<time>
"""
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import UserError
from . import curves_png, tsne_png

def tsne_from_config(cfg, run_dir: Path) -> Path:
    """The `tsne` command: embed the first cfg.num_points images of cfg.split."""
    from ..data.sources import build_source
    from ..distributed import pick_device
    from ..features import extract
    from ..pretrained import load_encoder
    if cfg.split not in ("train", "test"):
        raise UserError(f"split={cfg.split} is not allowed: use train or test")
    if cfg.num_points < 4 or cfg.perplexity <= 0 or cfg.iterations < 1:
        raise UserError("num_points needs >= 4, perplexity > 0 and iterations >= 1 "
                        f"(got {cfg.num_points}, {cfg.perplexity}, {cfg.iterations})")
    device = pick_device(cfg.device)
    enc = load_encoder(cfg)
    src = build_source(cfg, cfg.split, device)
    n = min(cfg.num_points, len(src))
    features = extract(enc.backbone.to(device), src, batch_size=cfg.batch_size, normalize=True, limit=n)
    if src.task == "regression":
        labels, what = src.targets[:n, 0].float(), "coloured by m"
    else:
        labels, what = src.labels[:n], "coloured by class"
    out = Path(cfg.out) if cfg.out else run_dir / "tsne.png"
    source = "random init" if enc.path is None else enc.path.parent.parent.name
    tsne_png(features, labels, out, list(src.classes), perplexity=cfg.perplexity,
             iterations=cfg.iterations, seed=cfg.seed, max_points=n,
             title=f"t-SNE, {cfg.dataset.name} {cfg.split} ({n} images, {what})\n{source}")
    print(f"tsne: {out} ({n} {cfg.dataset.name} {cfg.split} images)", flush=True)
    return out


USAGE = ("usage: python -m sslcifar.figures tsne [pretrained=PATH dataset=... key=value ...]\n"
         "       python -m sslcifar.figures curves RUN_DIR [OUT.png]")


def main(argv: Optional[List[str]] = None) -> None:
    from ..cli import check_overrides, report_user_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("tsne", "curves"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] == "curves":
        if len(argv) not in (2, 3):
            print(USAGE, file=sys.stderr)
            sys.exit(2)
        out = report_user_errors(curves_png)(*argv[1:])
        print(f"curves: {out}", flush=True)
        return
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from ..eval_config import register_eval_configs
    register_eval_configs()
    sys.argv = [sys.argv[0], *argv[1:]]          # Hydra reads the overrides from sys.argv
    check_overrides("tsne")

    @hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[2] / "conf"),
                config_name="tsne")
    @report_user_errors
    def run(cfg):
        return tsne_from_config(cfg, Path(HydraConfig.get().runtime.output_dir))
    run()


if __name__ == "__main__":
    main()
