"""Fingerprints of training runs: has a refactoring changed any number?

    python bench/fingerprint.py                 # 20-step CPU runs of every registered method
    python bench/fingerprint.py --demo          # also the README demo's `final:` line (4 min)

Every method of the registry (`sslcifar.methods.METHODS`, so a new method joins by itself),
with the per-method overrides of tests/conftest.py's METHOD_OVERRIDES, plus the VARIANTS
below, trains for 20 steps on the test fixture's real CIFAR-10 images (1000 train /
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

# rows besides one per registered method: (script, overrides)
VARIANTS = {
    "moco.py": ("moco.py", ["moco_k=256"]),          # MoCo v2 through its own entry point
    "sogclr_imagenet": ("simclr.py", ["method=sogclr", "loss.branch=imagenet"]),
}
COMMON = ["backbone.width=8", "batch_size=16", "max_steps=20", "epochs=2", "progress=false",
          "tensorboard=false", "device=cpu", "eval.knn_k=5", "eval.knn_every=0"]


def rows():
    """{row name: (script, overrides)}: every registered method, then the variants."""
    from sslcifar.methods import METHODS
    from tests.conftest import METHOD_OVERRIDES
    out = {name: ("simclr.py", [f"method={name}", *METHOD_OVERRIDES.get(name, [])])
           for name in sorted(METHODS)}
    out.update(VARIANTS)
    return out


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
    ap.add_argument("--methods", default=None, help="comma-separated rows (default: all)")
    args = ap.parse_args()
    table = rows()
    from tests.conftest import _real_cifar_subset, write_cifar_layout, HAS_REAL_CIFAR
    if not HAS_REAL_CIFAR:
        sys.exit("error: needs ../shared/data/cifar10-jpeg.tar.gz (or SSLCIFAR_SHARED_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        d = _real_cifar_subset(1000, 500)
        root = write_cifar_layout(Path(tmp) / "cifar", *d["train"], *d["test"])
        for name in (args.methods.split(",") if args.methods else table):
            script, extra = table[name]
            out = Path(tmp) / name
            proc = subprocess.run([sys.executable, str(REPO / script), *COMMON, *extra,
                                   f"dataset.root={root}", f"hydra.run.dir={out}"],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                sys.exit(f"{name} failed")
            final = next(l for l in proc.stdout.splitlines() if l.startswith("final:"))
            named, anon = weights_hashes(out / "checkpoints" / "last.pt")
            print(f"{name:<16} weights={named} content={anon} {final.split(' (run dir')[0]}",
                  flush=True)
        if args.demo:
            out = Path(tmp) / "demo"
            proc = subprocess.run([sys.executable, str(REPO / "simclr.py"), "experiment=demo",
                                   "progress=false", f"hydra.run.dir={out}"],
                                  capture_output=True, text=True, cwd=REPO)
            final = [l for l in proc.stdout.splitlines() if l.startswith("final:")]
            print(f"{'demo':<16} {final[0].split(' (run dir')[0] if final else proc.stderr[-2000:]}")


if __name__ == "__main__":
    main()
