"""Time to accuracy: a run's kNN top-1 against wall-clock minutes, beside published races.

    python bench/tta_plot.py RUN_DIR [OUT.png]

Reads RUN_DIR/metrics.jsonl (its per-epoch `images_per_s` gives each epoch's seconds)
and draws its kNN top-1 against the cumulative minutes, with the reference points:
dkobak/simclr-cifar10 (ResNet-18, one A100: 83.2% after 100 epochs in 20 min, 90.3% after
500 epochs in 1 h 39 min) and lightly's CIFAR-10 benchmark (SimCLR, batch 512, 200
epochs, 87 min on an A6000: 84.8%). Prints the minutes each kNN point was reached at.
"""
import json
import sys
from pathlib import Path

REFERENCES = [("dkobak/simclr-cifar10, A100", [(20, 83.2), (99, 90.3)]),
              ("lightly SimCLR, A6000", [(87, 84.8)])]


def curve(run_dir: Path):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    cfg = json.loads((run_dir / "done.json").read_text()) if (run_dir / "done.json").exists() else {}
    batch = None
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.exists():
        import yaml
        batch = yaml.safe_load(hydra_cfg.read_text()).get("batch_size")
    minutes, points, prev_step = 0.0, [], 0
    for r in rows:
        images = (r["step"] - prev_step) * (batch or 0)
        minutes += images / r["images_per_s"] / 60 if r.get("images_per_s") else 0
        prev_step = r["step"]
        if r.get("knn_top1") is not None:
            points.append((minutes, r["knn_top1"], r["epoch"] + 1))
    return points, cfg


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    run_dir = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else run_dir / "tta.png"
    points, _ = curve(run_dir)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="sslcifar (this run)")
    for name, pts in REFERENCES:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", linestyle="--", label=name)
    ax.axhline(90, color="gray", linewidth=0.5)
    ax.set_xlabel("wall-clock minutes (training; kNN evaluations not counted)")
    ax.set_ylabel("kNN top-1 (%), CIFAR-10 test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    for m, acc, ep in points:
        print(f"epoch {ep}: kNN {acc:.2f}% after {m:.1f} min")
    print(f"tta: {out}")


if __name__ == "__main__":
    main()
