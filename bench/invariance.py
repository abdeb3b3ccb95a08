"""What the invariance gradient penalty buys: SimCLR on Spirograph with and without it.

    python bench/invariance.py                          # about 25 min on 2 CPU cores
    python bench/invariance.py --epochs 6 --gp-weight 0.01

Both runs are `method=invclr` with the same data, steps and seed (the demo's recipe:
ResNet-18 width 16, 4096 training images, batch 256); one with gp_weight=0 (plain SimCLR,
the penalty not even computed), one with the penalty (the invariance reproduction's
Spirograph setting: lambda 1e-2, clamp 1000, M 100 draws). Each encoder is then evaluated
as the reproduction does (L-BFGS linear regression of the four generative parameters on
transformed inputs: MSE) and by least squares on the plain images (R^2), and its measured
invariance (the penalty's value on 512 held-out images, lower = more invariant) is taken.
The step time of each run shows the cost of the double backward.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd):
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--gp-weight", type=float, default=0.01)
    ap.add_argument("--out", default="outputs/bench_invariance")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    data = ["dataset=spirograph", "dataset.num_train=4096", "dataset.num_test=1024"]
    common = ["method=invclr", *data, "backbone.width=16", "batch_size=256",
              f"epochs={args.epochs}", "loss.temperature=0.2", "optimizer.lr=0.5",
              "scheduler.final_lr=0.0", "method.gp_upper_limit=1000", "eval.knn_every=0",
              "eval.knn_k=20", "progress=false", "tensorboard=false", "device=cpu"]
    evaluate = [*data, "device=cpu", "progress=false", "invariance_images=512"]
    rows = []
    for name, weight in (("SimCLR (no penalty)", 0.0), (f"penalty lambda={args.gp_weight:g}", args.gp_weight)):
        run_dir = out / f"gp{weight:g}"
        seconds = run(["simclr.py", *common, f"method.gp_weight={weight}", f"hydra.run.dir={run_dir}"])
        metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        speed = sum(r["images_per_s"] for r in metrics) / len(metrics)
        res = {}
        for tag, extra in (("lbfgs", ["regression=lbfgs", "inputs=transformed"]), ("ridge", [])):
            d = out / f"gp{weight:g}_{tag}"
            run(["linear_eval.py", f"pretrained={run_dir}", *evaluate, *extra, f"hydra.run.dir={d}"])
            res[tag] = json.loads((d / "linear_eval.json").read_text())
        rows.append((name, res["lbfgs"]["mse"], res["lbfgs"]["r2"], res["ridge"]["r2"],
                     res["ridge"]["invariance"], metrics[-1]["knn_r2"], 256 / speed, seconds))
        print(rows[-1], flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l), "?")
    print(f"\n{cpu}, {os.cpu_count()} cores; Spirograph, ResNet-18 width 16, 4096 images, "
          f"{args.epochs} epochs, batch 256\n")
    print("| run | L-BFGS MSE (transformed) | its R^2 | least-squares R^2 (plain) | measured "
          "invariance | kNN R^2 | s / step | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, mse, r2l, r2, inv, knn, step, sec in rows:
        print(f"| {name} | {mse:.5f} | {r2l:.3f} | {r2:.3f} | {inv:.4g} | {knn:.3f} | "
              f"{step:.2f} | {sec / 60:.1f} min |")


if __name__ == "__main__":
    main()
