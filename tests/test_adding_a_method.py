"""A new method costs its file, its loss, its YAML files and its loss test, nothing else: a
copy of SimSiam under a new name, in a copy of the repository, is picked up by the registry,
the config tree, every automatic per-method test, the fingerprint and the methods bench,
with no other edit."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO, SHARED_DATA


def _copy_repository(dst):
    for name in ("sslcifar", "conf", "tests", "bench"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("simclr.py", "moco.py", "linear_eval.py", "setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / name, dst / name)


def _add_newsiam(tree):
    """The four files of README's "Adding a method", made from SimSiam's."""
    method = (REPO / "sslcifar" / "methods" / "simsiam.py").read_text()
    method = method.replace('name = "simsiam"', 'name = "newsiam"').replace(
        'loss_name = "simsiam"', 'loss_name = "newsiam"')
    method = re.sub(r"\bSimSiam(Config|LossConfig)?\b", lambda m: "NewSiam" + (m.group(1) or ""), method)
    (tree / "sslcifar" / "methods" / "newsiam.py").write_text(method)
    conf = (REPO / "conf" / "method" / "simsiam.yaml").read_text()
    conf = conf.replace("/schema/method/simsiam@", "/schema/method/newsiam@").replace(
        "loss@_global_.loss: simsiam", "loss@_global_.loss: newsiam").replace("name: simsiam", "name: newsiam")
    (tree / "conf" / "method" / "newsiam.yaml").write_text(conf)
    loss = (REPO / "conf" / "loss" / "simsiam.yaml").read_text()
    (tree / "conf" / "loss" / "newsiam.yaml").write_text(
        loss.replace("/schema/loss/simsiam@", "/schema/loss/newsiam@").replace("name: simsiam", "name: newsiam"))
    # its loss test (the loss function itself is SimSiam's here: -1 for identical p and z)
    (tree / "tests" / "test_newsiam_loss.py").write_text(
        "import torch\n\nfrom sslcifar.losses import simsiam\n\n\ndef test_newsiam_loss():\n"
        "    z = torch.randn(4, 8)\n    assert abs(simsiam(z, z, z, z).item() + 1) < 1e-6\n")


@pytest.mark.slow
def test_a_copied_method_is_covered_by_the_suite_with_no_other_edit(tmp_path):
    tree = tmp_path / "repo"
    tree.mkdir()
    _copy_repository(tree)
    _add_newsiam(tree)
    env = dict(os.environ, PYTHONPATH=str(tree), SSLCIFAR_SHARED_DATA=str(SHARED_DATA))

    def py(*args, timeout=900):
        return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=timeout)

    collected = py("-m", "pytest", "--collect-only", "-q", "tests/test_every_method.py",
                   "tests/test_config.py")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    ids = [l for l in collected.stdout.splitlines() if "newsiam" in l]
    for test in ("test_loss_falls_on_a_fixed_tiny_batch", "test_two_ranks_equal_one_process_with_the_whole_batch",
                 "test_resumes_mid_epoch_bit_identically",
                 "test_trains_from_simclr_py_and_linear_eval_and_knn_read_its_checkpoint"):
        assert f"tests/test_every_method.py::{test}[newsiam]" in ids, (test, ids)
    # and they pass: the quick ones here (the slow ones, resume and the entry points, run
    # the same code as for SimSiam)
    ran = py("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests/test_every_method.py",
             "tests/test_config.py", "tests/test_newsiam_loss.py", "-k",
             "newsiam or for_every_registered_method")
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert re.search(r"[3-9] passed|\d\d passed", ran.stdout), ran.stdout[-500:]
    rows = py("-c", "import sys; sys.path.insert(0, 'bench'); import fingerprint, methods; "
                    "print(sorted(fingerprint.rows())); print(sorted(methods.recipes()))")
    assert rows.returncode == 0, rows.stderr[-2000:]
    assert rows.stdout.count("'newsiam'") == 2
