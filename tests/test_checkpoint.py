"""Checkpoints under faults: SIGKILL mid-write, truncation, malicious pickles,
divergence, and kill-and-resume equality."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sslcifar import checkpoint as ckpt
from sslcifar.errors import UserError

from .conftest import REPO, TINY, run


def _state(i: int) -> dict:
    return {"step": i, "model": {"w": torch.full((256, 1024), float(i))}}   # 1 MB per save


def test_save_last_keeps_the_last_two(tmp_path):
    for i in range(3):
        ckpt.save_last(_state(i), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]
    assert ckpt.load(tmp_path / "last.pt")["step"] == 2
    assert ckpt.load(tmp_path / "prev.pt")["step"] == 1


WRITER = """
import sys, torch
from sslcifar import checkpoint as ckpt
i = 0
while True:
    ckpt.save_last({"step": i, "model": {"w": torch.full((512, 1024), float(i))}}, sys.argv[1])
    i += 1
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_writes_always_leaves_a_loadable_checkpoint(tmp_path):
    for trial in range(6):
        folder = tmp_path / str(trial)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE,
                                text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        proc.stdout.readline()                       # at least one save finished
        time.sleep(0.05 + 0.07 * trial)              # then die somewhere in a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state, path = ckpt.load_latest(folder)
        assert state is not None, list(folder.iterdir())
        assert torch.equal(state["model"]["w"], torch.full((512, 1024), float(state["step"])))


def test_truncated_checkpoint_names_the_file_and_falls_back(tmp_path, caplog):
    ckpt.save_last(_state(1), tmp_path)
    ckpt.save_last(_state(2), tmp_path)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])          # cut by a crash or a full disk
    with pytest.raises(UserError, match=f"checkpoint {last} is truncated or corrupt"):
        ckpt.load(last)
    state, path = ckpt.load_latest(tmp_path)
    assert path.name == "prev.pt" and state["step"] == 1
    assert "resuming from the previous good checkpoint" in caplog.text
    (tmp_path / "prev.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no loadable checkpoint"):
        ckpt.load_latest(tmp_path)


def test_every_way_a_damaged_checkpoint_fails_is_one_clear_line(tmp_path):
    """300 files of random bytes, a real checkpoint cut at 60 places and with 60 single bytes
    changed: each either loads or ends in the one UserError naming the file (before,
    about 1 in 14 random files escaped as an IndexError or KeyError traceback)."""
    ckpt.save_last(_state(3), tmp_path)
    real = (tmp_path / "last.pt").read_bytes()
    rng = np.random.RandomState(0)
    damaged = [rng.bytes(5000) for _ in range(300)]
    damaged += [real[:int(n)] for n in np.linspace(0, len(real) - 1, 60)]
    for pos in rng.randint(0, len(real), 60):
        b = bytearray(real)
        b[pos] ^= 0xFF
        damaged.append(bytes(b))
    path = tmp_path / "bad.pt"
    refused = 0
    for data in damaged:
        path.write_bytes(data)
        try:
            ckpt.load(path)             # a changed byte inside tensor data still loads: fine
        except UserError as e:
            assert str(path) in str(e), str(e)   # names the file
            assert "\n" not in str(e) and "Fix:" in str(e)
            refused += 1
    assert refused >= 360               # every random and every truncated file


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "last.pt"
    torch.save({"step": 1, "model": _Exploit(marker)}, bad)
    with pytest.raises(UserError, match="refused: it holds objects other than tensors"):
        ckpt.load(bad)
    assert not marker.exists()


@pytest.mark.slow
def test_diverging_run_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    common = ["experiment=demo", *TINY, "dataset.num_train=64", "dataset.num_test=32",
              "epochs=4", "log_every=1", f"hydra.run.dir={out}"]
    run("simclr.py", *common, "max_steps=4")                           # one good epoch saved
    good = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    proc = run("simclr.py", *common, "resume=true", "optimizer.lr=1e30", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    # step 5 still uses the good weights; its update with lr 1e30 makes step 6's loss NaN
    assert line.startswith("error: loss is nan at epoch 1 step 6"), line
    assert "resuming with optimizer.lr=1e+30 (the checkpoint trained with" in proc.stdout + proc.stderr
    kept = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert kept["step"] == good["step"] == 4
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume_matches_an_uninterrupted_run(tmp_path, cifar_root):
    common = [*TINY, f"dataset.root={cifar_root}", "dataset.subset=64", "epochs=3", "log_every=1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run("simclr.py", *common, f"hydra.run.dir={full}")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "simclr.py"), *common,
                             f"hydra.run.dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "last.pt").exists():    # first epoch saved ...
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)                                              # ... then die mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "done.json").exists()
    run("simclr.py", *common, "resume=true", f"hydra.run.dir={killed}")
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ra = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]  # noqa
    assert strip(ra) == strip(rb)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 600 kB tmpfs: a real 'No space left on device' (needs root to mount)."""
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def test_disk_full_keeps_the_previous_checkpoint(tiny_fs):
    small = {"step": 1, "model": {"w": torch.zeros(10)}}
    ckpt.save_last(small, tiny_fs)
    with pytest.raises(UserError, match="could not write checkpoint .*No space left on device"):
        ckpt.save_last({"step": 2, "model": {"w": torch.zeros(400_000)}}, tiny_fs)   # 1.6 MB
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["last.pt"]       # no partial file left
    assert ckpt.load(tiny_fs / "last.pt")["step"] == 1


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_training(tiny_fs, tmp_path):
    proc = run("simclr.py", "experiment=demo", *TINY, "dataset.num_train=32",
               "dataset.num_test=16", f"run_dir={tiny_fs}/run", f"hydra.run.dir={tmp_path}/h",
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: not enough disk space for checkpoints in {tiny_fs}/run"), line
    assert "Fix: free some space" in line
    assert not (tiny_fs / "run" / "checkpoints").exists() and "epoch 0" not in proc.stdout


def test_checkpoint_size_estimate_is_close_to_the_real_file(tmp_path):
    """The estimate behind the disk-space check, against a checkpoint of a real run."""
    from sslcifar.checkpoint import estimated_bytes
    from sslcifar.methods import build_method
    from .test_config import compose_cfg
    run("simclr.py", *TINY, "experiment=demo", "dataset.num_train=32", "dataset.num_test=16",
        "eval.online_probe=false", f"hydra.run.dir={tmp_path}")
    cfg = compose_cfg(overrides=["experiment=demo", "backbone.width=8"])
    estimate = estimated_bytes(build_method(cfg, 32, 10), None, cfg.optimizer.name)
    real = (tmp_path / "checkpoints" / "last.pt").stat().st_size
    assert 0.8 * real < estimate < 1.2 * real, (estimate, real)
