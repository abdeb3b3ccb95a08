"""Does each method learn? Every method at CPU scale on real CIFAR-10, side by side.

    python bench/methods.py --data-root ~/.cache/cifar10            # all methods, about 2 h on 2 cores
    python bench/methods.py --data-root DIR --methods byol,simsiam --epochs 10
    python bench/methods.py --data-root DIR --methods dino_fast \
        --variant dino_fast=dino:method.base_momentum=0.99          # a recipe changed
    python bench/methods.py --data-root DIR --methods dino_vit --no-random --variant \
        dino_vit=dino:experiment=dino_vit_tiny_cifar10,backbone=vit_tiny,backbone.width=192

Every registered method (a new one joins by itself, with its preset: Method.preset or
conf/experiment/<name>_cifar10.yaml, else simclr.py's defaults with method=NAME).
The same for every method: ResNet-18 width 16, the first 10,000 training images, 10
epochs, batch 256, the method's own recipe otherwise (its preset, with --warmup warm-up
epochs: 1, or 10 = the first 10 epochs of solo-learn's schedule, which its LARS recipes
need), then kNN top-1 on the 10,000 test images (k 200, T 0.1, the training loop's final
evaluation) and the fast linear probe (L-BFGS on frozen features of the same 10,000
training images). `pretrained=random` (the seeded initialisation every run starts from)
is the baseline. Prints a Markdown table; each run's directory is kept under --out.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def recipes():
    """{method: its recipe's overrides} for every registered method: its preset
    (`experiment=<Method.preset or NAME_cifar10>`) where it has one, else `method=NAME` on
    simclr.py's defaults. A new method joins the table by itself."""
    from sslcifar.methods import METHODS
    from sslcifar.paths import config_dir
    out = {}
    for name, cls in sorted(METHODS.items()):
        preset = cls.preset or f"{name}_cifar10"
        has = (config_dir() / "experiment" / f"{preset}.yaml").exists()
        out[name] = [f"experiment={preset}"] if has else [f"method={name}"]
    return out


def warms_up(overrides) -> bool:
    """Whether the recipe has a warm-up (solo-learn's 10 epochs): --warmup applies to those."""
    from hydra import compose, initialize_config_dir
    from sslcifar.config import register_configs
    from sslcifar.paths import config_dir
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("simclr", overrides=list(overrides)).scheduler.warmup_epochs > 0


class Failed(Exception):
    """A run that ended with an error line (a diverged loss, say): its row says so."""


def run(cmd, log):
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise Failed(last if last.startswith("error:") else f"exit {proc.returncode}: {last}")
    return proc.stdout, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="CIFAR-10 python layout (make_cifar10.py)")
    base_recipes = recipes()
    ap.add_argument("--methods", default=",".join(base_recipes))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="outputs/bench_methods")
    ap.add_argument("--warmup", default="1", help="warm-up epochs of the presets' recipes: N, "
                    "or per method, e.g. 1,vicreg=10 (VICReg diverges with 1: see the README)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:OVERRIDES",
                    help="a row NAME: METHOD's recipe plus comma-separated overrides, e.g. "
                    "swav_q0=swav:method.queue_start_epoch=0 (repeatable; list NAME in --methods)")
    ap.add_argument("--no-random", action="store_true", help="leave out the random baseline")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"dataset.root={args.data_root}", f"dataset.subset={args.subset}",
              "backbone=resnet18", f"backbone.width={args.width}", f"batch_size={args.batch}",
              f"epochs={args.epochs}",
              "eval.knn_every=0", "progress=false", "tensorboard=false", "device=cpu"]
    probe = [f"dataset.root={args.data_root}", f"dataset.subset={args.subset}", "recipe=fast",
             "progress=false", "device=cpu"]
    warmups = dict(w.split("=") if "=" in w else ("*", w) for w in args.warmup.split(","))
    table = {name: (recipe, name) for name, recipe in base_recipes.items()}
    for v in args.variant:
        name, _, rest = v.partition("=")
        base, _, overrides = rest.partition(":")
        if base not in base_recipes:
            ap.error(f"--variant {v}: unknown method {base!r} (one of {', '.join(base_recipes)})")
        extra = [o for o in overrides.split(",") if o]
        # a variant's own preset replaces the method's (dino_vit=dino:experiment=dino_vit_tiny_cifar10)
        own = any(o.startswith("experiment=") for o in extra)
        table[name] = (extra if own else base_recipes[base] + extra, base)
    for name in args.methods.split(","):
        if name not in table:
            ap.error(f"unknown method {name!r} (one of {', '.join(table)}, or define it with --variant)")
    rows = []
    for name in ([] if args.no_random else ["random"]) + args.methods.split(","):
        if name == "random":
            stdout, _ = run([sys.executable, "linear_eval.py", "pretrained=random",
                             f"backbone.width={args.width}", *probe,
                             f"hydra.run.dir={out / 'random'}"], out / "random.log")
            knn, _ = run([sys.executable, "-m", "sslcifar.knn", "pretrained=random",
                          f"backbone.width={args.width}", f"dataset.root={args.data_root}",
                          f"max_train={args.subset}", "progress=false", "device=cpu",
                          f"hydra.run.dir={out / 'random_knn'}"], out / "random_knn.log")
            rows.append((name, float(re.search(r"top1=([\d.]+)", knn).group(1)),
                         float(re.search(r"top1=([\d.]+)", stdout).group(1)), None, None))
            print(rows[-1], flush=True)
            continue
        recipe, base = table[name]
        run_dir = out / name
        epochs = warmups.get(name, warmups.get(base, warmups.get("*", "1")))
        # only recipes with a warm-up get --warmup (solo-learn's); SimCLR's and MoCo's keep none
        warmup = [f"scheduler.warmup_epochs={epochs}"] if warms_up(base_recipes[base]) else []
        # the recipe's own keys win over the common ones (a variant's backbone=vit_tiny and
        # backbone.width=192 over ResNet-18 width 16), and come last
        mine = {o.split("=", 1)[0] for o in recipe}
        shared = [c for c in common if c.split("=", 1)[0] not in mine]
        try:
            _, seconds = run([sys.executable, "simclr.py", *shared, *recipe, *warmup,
                              f"hydra.run.dir={run_dir}"], out / f"{name}.log")
        except Failed as e:
            rows.append((name, None, None, None, str(e)))
            print(rows[-1], flush=True)
            continue
        done = json.loads((run_dir / "done.json").read_text())
        stdout, _ = run([sys.executable, "linear_eval.py", f"pretrained={run_dir}", *probe,
                         f"hydra.run.dir={out / (name + '_linear')}"], out / f"{name}_linear.log")
        rows.append((name, done["knn_top1"], float(re.search(r"top1=([\d.]+)", stdout).group(1)),
                     seconds, done.get("z_std")))
        print(rows[-1], flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l), "?")
    print(f"\n{cpu}, {os.cpu_count()} cores; ResNet-18 width {args.width}, {args.subset} CIFAR-10 "
          f"training images, {args.epochs} epochs, batch {args.batch}\n")
    print("| method | kNN top-1 | fast linear top-1 | pretraining wall time | z_std (last epoch) |")
    print("| --- | --- | --- | --- | --- |")
    for name, knn, lin, sec, std in rows:
        if knn is None:                     # a failed run: its error line
            print(f"| {name} | - | - | - | {std} |")
            continue
        wall = f"{sec / 60:.1f} min" if sec else "-"
        print(f"| {name} | {knn:.2f} | {lin:.2f} | {wall} | {std:.4f} |" if std is not None
              else f"| {name} | {knn:.2f} | {lin:.2f} | {wall} | - |")


if __name__ == "__main__":
    main()
