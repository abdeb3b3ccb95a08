"""Fingerprints of training runs: has a refactoring changed any number?

    python bench/fingerprint.py                 # 20-step CPU runs of every method
    python bench/fingerprint.py --demo          # also the README demo's `final:` line (4 min)

Each method trains for 20 steps on the test fixture's real CIFAR-10 images (1000 train /
500 test from ../shared/data, as tests/conftest.py builds them) and the script prints a
SHA-256 of the final weights (`checkpoints/last.pt`'s model tensors, in key order) and of
the same tensors without their names (sorted by content), so a run whose modules were
only renamed still matches. Run it before and after a change on the same machine: the
lines must be identical. Floats depend on the CPU's math kernels, so compare on one machine.
"""
import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = {
    "simclr": ("simclr.py", []),
    "moco": ("moco.py", ["moco_k=256"]),
    "sogclr": ("simclr.py", ["method=sogclr"]),
    # the branch that was the default before loss.branch existed (its numbers must survive)
    "sogclr_imagenet": ("simclr.py", ["method=sogclr", "loss.branch=imagenet"]),
    "supcon": ("simclr.py", ["method=supcon"]),
    "supervised": ("simclr.py", ["method=supervised"]),
}
COMMON = ["backbone.width=8", "batch_size=32", "max_steps=20", "epochs=2", "progress=false",
          "tensorboard=false", "device=cpu", "eval.knn_k=5", "eval.knn_every=0"]


def weights_hashes(checkpoint: Path):
    state = torch.load(checkpoint, weights_only=True)["model"]
    named, anonymous = hashlib.sha256(), []
    for key in sorted(state):
        data = state[key].detach().cpu().contiguous().numpy().tobytes()
        named.update(key.encode() + data)
        anonymous.append(hashlib.sha256(data).hexdigest())
    return named.hexdigest()[:16], hashlib.sha256("".join(sorted(anonymous)).encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", action="store_true", help="also run `simclr.py experiment=demo`")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    from tests.conftest import _real_cifar_subset, write_cifar_layout, HAS_REAL_CIFAR
    if not HAS_REAL_CIFAR:
        sys.exit("error: needs ../shared/data/cifar10-jpeg.tar.gz (or SSLCIFAR_SHARED_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        d = _real_cifar_subset(1000, 500)
        root = write_cifar_layout(Path(tmp) / "cifar", *d["train"], *d["test"])
        for name in args.methods.split(","):
            script, extra = METHODS[name]
            out = Path(tmp) / name
            proc = subprocess.run([sys.executable, str(REPO / script), *COMMON, *extra,
                                   f"dataset.root={root}", f"hydra.run.dir={out}"],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                sys.exit(f"{name} failed")
            final = next(l for l in proc.stdout.splitlines() if l.startswith("final:"))
            named, anon = weights_hashes(out / "checkpoints" / "last.pt")
            print(f"{name:<11} weights={named} content={anon} {final.split(' (run dir')[0]}",
                  flush=True)
        if args.demo:
            out = Path(tmp) / "demo"
            proc = subprocess.run([sys.executable, str(REPO / "simclr.py"), "experiment=demo",
                                   "progress=false", f"hydra.run.dir={out}"],
                                  capture_output=True, text=True, cwd=REPO)
            final = [l for l in proc.stdout.splitlines() if l.startswith("final:")]
            print(f"demo        {final[0].split(' (run dir')[0] if final else proc.stderr[-2000:]}")


if __name__ == "__main__":
    main()
