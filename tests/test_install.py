"""The package installs as users install it: a regular (not editable) `pip install .` ships
the config tree inside the package, and its commands run from any directory."""
import configparser
import os
import subprocess
import sys

import pytest

from .conftest import REPO


def test_setup_cfg_lists_every_package_folder_and_the_configs():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sslcifar").rglob("__init__.py")}
    assert listed == on_disk | {"sslcifar.conf"}
    assert "sslcifar.conf = conf" in cfg["options"]["package_dir"]


@pytest.mark.slow
def test_a_regular_install_composes_and_runs_a_tiny_job_from_another_directory(tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--disable-pip-version-check",
                          "--target", str(target), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (target / "sslcifar" / "conf" / "simclr.yaml").is_file()
    env = dict(os.environ, PYTHONPATH=str(target))      # the installed copy, not the checkout
    where = subprocess.run([sys.executable, "-c", "import sslcifar.paths as p; print(p.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(target / "sslcifar" / "conf"), where.stderr
    proc = subprocess.run([sys.executable, "-m", "sslcifar", "simclr", "experiment=demo",
                           "backbone.width=8", "dataset.num_train=64", "dataset.num_test=32",
                           "batch_size=16", "max_steps=2", "progress=false", "tensorboard=false",
                           "device=cpu", "eval.knn_k=5"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final: loss=" in proc.stdout
    runs = list((elsewhere / "outputs" / "simclr").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.pt").exists()
    assert (runs[0] / "simclr.log").exists()
