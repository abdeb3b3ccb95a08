"""Stopping a run by hand or by the cluster, with real signals sent to real runs: Ctrl-C
saves at the next step and exits 130 with one line; a signal during an evaluation stops it
at once; the run resumes to what an uninterrupted run gives."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import REPO, TINY, run

SPIRO = ["experiment=demo", *TINY, "dataset.num_train=128", "dataset.num_test=64", "log_every=1"]


def _start(run_dir, *overrides):
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, str(REPO / "simclr.py"), *SPIRO, *overrides,
                             f"hydra.run.dir={run_dir}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, seconds=120):
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _events(run_dir):
    return [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ctrl_c_saves_at_the_next_step_says_so_in_one_line_and_resumes_exactly(tmp_path):
    run_dir = tmp_path / "split"
    proc = _start(run_dir, "epochs=30", "eval.knn_every=0")
    _wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists(), proc)      # past epoch 0
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 8 < stopped < 30 * 8                    # saved at the step after the signal
    lines = [l for l in (out + err).splitlines() if "Ctrl-C" in l]     # the log: stdout
    assert len(lines) == 1 and f"Ctrl-C at step {stopped}: checkpoint saved" in lines[0]
    assert _events(run_dir)[-1] == {**_events(run_dir)[-1], "event": "stopped",
                                    "reason": "signal", "signal": "SIGINT", "step": stopped}
    # resumed, it ends where a run that was never stopped ends
    common = ["epochs=30", "eval.knn_every=0", f"max_steps={stopped + 4}"]
    run("simclr.py", *SPIRO, *common, "resume=true", f"hydra.run.dir={run_dir}")
    run("simclr.py", *SPIRO, *common, f"hydra.run.dir={tmp_path / 'full'}")
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == stopped + 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _logged_step(run_dir, step):
    """The loop has logged `step` (steps.jsonl): its end-of-epoch evaluation comes next."""
    path = run_dir / "steps.jsonl"
    return path.exists() and f'"step": {step},' in path.read_text()


def _metrics(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


@pytest.mark.slow
def test_ctrl_c_during_the_final_knn_stops_it_at_once_and_the_resume_measures_it_again(tmp_path):
    """The kNN on 8192 test images takes ~9 s here. Ctrl-C during the final one (before:
    ignored until the run ended) ends the command within seconds, keeps the trained
    weights, and once resumed its metrics are those of a run never stopped. (A cluster's
    SIGTERM takes the same path, with exit status 0.)"""
    sig, code = signal.SIGINT, 130
    common = ["epochs=1", "dataset.num_test=8192"]
    run_dir = tmp_path / "split"
    proc = _start(run_dir, *common)
    _wait_for(lambda: _logged_step(run_dir, 8), proc)
    time.sleep(1.0)
    t = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert time.time() - t < 6, "the evaluation went on"
    assert proc.returncode == code and "Traceback" not in err, err[-3000:]
    assert _metrics(run_dir)[-1]["evaluation_interrupted"] is True
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    run("simclr.py", *SPIRO, *common, "resume=true", f"hydra.run.dir={run_dir}")
    run("simclr.py", *SPIRO, *common, f"hydra.run.dir={tmp_path / 'full'}")
    assert _metrics(run_dir) == _metrics(tmp_path / "full")
    assert "knn_r2" in _metrics(run_dir)[0]


@pytest.mark.slow
def test_a_signal_while_the_figures_are_drawn_stops_at_once(tmp_path):
    """The t-SNE of 1024 test images at the end takes tens of seconds; Ctrl-C during it ends
    the command within seconds; the run itself is finished."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "epochs=1", "dataset.num_test=1024", "eval.tsne=true",
                  "eval.tsne_points=1024")
    _wait_for(lambda: (run_dir / "done.json").exists(), proc)     # training and kNN done
    time.sleep(0.5)
    t = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert time.time() - t < 10, "the evaluation went on"
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "stopped while drawing the figures" in out + err
    assert not (run_dir / "tsne.png").exists()
