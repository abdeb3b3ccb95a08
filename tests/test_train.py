"""The real entrypoints, run as a user runs them: subprocess, Hydra, real files."""
import json

import pytest
import torch

from .conftest import TINY, run


def _load(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _rows(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s")          # wall-clock, the only field allowed to differ
    return rows


@pytest.mark.slow
def test_simclr_on_cifar_writes_the_run_directory(tmp_path, cifar_root):
    out = tmp_path / "run"
    proc = run("simclr.py", *TINY, f"dataset.root={cifar_root}", "dataset.subset=64",
               "epochs=2", "tensorboard=true", f"hydra.run.dir={out}")
    assert "final:" in proc.stdout and "knn_top1=" in proc.stdout
    assert (out / ".hydra" / "config.yaml").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[-1]["step"] == 8 and {"loss", "lr", "images_per_s", "knn_top1",
                                       "online_train_top1"} <= set(rows[-1])
    state = _load(out)
    assert state["step"] == 8 and state["config"]["batch_size"] == 16
    assert {"model", "optimizer", "scaler", "rng", "metrics"} <= set(state)
    assert json.loads((out / "done.json").read_text())["finished"] is True
    # the online probe on the test split (solo-learn's "online linear"), recomputed from the
    # checkpoint's probe and the test images
    from sslcifar.data.sources import build_source
    from sslcifar.features import extract
    from sslcifar.methods import build_method
    from sslcifar.probe import OnlineProbe
    from .test_config import compose_cfg
    cfg = compose_cfg(overrides=[*TINY, f"dataset.root={cifar_root}"])
    model = build_method(cfg, 64, 10)
    model.load_state_dict(state["model"])
    probe = OnlineProbe(model.backbone.num_features, 10, 1e-3)
    probe.load_state_dict(state["probe"])
    test = build_source(cfg, "test", torch.device("cpu"))
    assert rows[-1]["online_test_top1"] == pytest.approx(
        probe.accuracy(extract(model.backbone, test), test.labels), abs=1e-9)
    # stderr is not a terminal here: no progress bar's carriage returns in it
    assert "\r" not in proc.stderr
    # the figure's data: every log step's loss, the epochs' metrics on the same step axis,
    # z_std against its 1/sqrt(128) reference
    from sslcifar.figures import curve_series
    curves = curve_series(out)
    assert curves["training loss"]["per log step"][0] == [4, 8]        # log_every 10, epochs of 4
    assert curves["accuracy"]["kNN (test)"][0] == [8]                 # at the end (knn_every 10)
    assert curves["collapse monitor"]["1/sqrt(D): spread outputs"][1] == [128 ** -0.5] * 2


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [("simclr.py", []),
                                           ("moco.py", ["moco_k=64", "method.bn_splits=4"])])
def test_resume_mid_epoch_is_bit_identical_to_an_uninterrupted_run(tmp_path, cifar_root,
                                                                   script, extra):
    """MoCo too: its queue, EMA key encoder and key shuffle continue exactly."""
    common = [*TINY, f"dataset.root={cifar_root}", "dataset.subset=64", "epochs=2", *extra]
    full, split = tmp_path / "full", tmp_path / "split"
    run(script, *common, f"hydra.run.dir={full}")
    run(script, *common, "max_steps=3", f"hydra.run.dir={split}")      # stops mid-epoch 0
    assert _load(split)["step"] == 3
    run(script, *common, "resume=true", f"hydra.run.dir={split}")
    a, b = _load(full), _load(split)
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _rows(full) == _rows(split)


@pytest.mark.slow
def test_data_kept_in_host_memory_trains_exactly_as_data_on_the_device(tmp_path, cifar_root):
    """dataset.placement=host: the images stay in host memory and each batch is copied."""
    common = [*TINY, f"dataset.root={cifar_root}", "dataset.subset=64", "max_steps=3",
              "eval.knn_every=0"]
    run("simclr.py", *common, "dataset.placement=device", f"hydra.run.dir={tmp_path / 'device'}")
    proc = run("simclr.py", *common, "dataset.placement=host", f"hydra.run.dir={tmp_path / 'host'}")
    assert "kept in host memory" in proc.stderr + proc.stdout
    a, b = _load(tmp_path / "device"), _load(tmp_path / "host")
    assert a["step"] == b["step"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _tiny_stl10(root, n_train=16, n_unlabeled=48, n_test=16):
    """stl10_binary/ in the official layout (column-major 96x96, labels 1..10), random pixels."""
    import numpy as np
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for part, n in (("train", n_train), ("unlabeled", n_unlabeled), ("test", n_test)):
        x = rng.randint(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        x.transpose(0, 1, 3, 2).tofile(folder / f"{part}_X.bin")
        if part != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{part}_y.bin")


@pytest.mark.slow
def test_stl10_pretrains_on_train_plus_unlabeled_with_the_online_probe(tmp_path):
    """The default STL-10 split mixes labelled and unlabeled (-1) images: the online probe
    learns from the labelled ones only, kNN votes with the labelled ones only."""
    _tiny_stl10(tmp_path / "data")
    out = tmp_path / "run"
    run("simclr.py", *TINY, "dataset=stl10", f"dataset.root={tmp_path / 'data'}",
        f"hydra.run.dir={out}")
    (row,) = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 4                               # (16 + 48) images / 16 a step
    assert 0 <= row["online_train_top1"] <= 100 and 0 <= row["knn_top1"] <= 100
    assert all(torch.isfinite(v).all() for v in _load(out)["probe"].values())


@pytest.mark.slow
def test_resume_with_another_config_stops_and_names_the_overrides_to_add(tmp_path, cifar_root):
    """`resume=true` without the first run's overrides would continue another experiment in
    the same folder: it stops with one line instead, and keeps the run's record intact."""
    import yaml
    out = tmp_path / "run"
    first = [*TINY, f"dataset.root={cifar_root}", "dataset.subset=64", "epochs=2",
             "loss.temperature=0.2"]
    run("simclr.py", *first, "max_steps=3", f"hydra.run.dir={out}")
    overrides = yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text())
    saved = (out / "checkpoints" / "last.pt").read_bytes()
    proc = run("simclr.py", *TINY, f"dataset.root={cifar_root}", "resume=true",
               f"hydra.run.dir={out}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: resume=true with a config that differs from the checkpoint's")
    assert "dataset.subset (None here, 64 in the checkpoint)" in line
    assert "add dataset.subset=64 epochs=2 loss.temperature=0.2" in line
    assert (out / "checkpoints" / "last.pt").read_bytes() == saved
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text()) == overrides
    assert yaml.safe_load((out / ".hydra" / "config.yaml").read_text())["dataset"]["subset"] == 64
    # with them (and another log_every, which may change) it goes on to the end
    run("simclr.py", *first, "log_every=2", "resume=true", f"hydra.run.dir={out}")
    state = _load(out)
    assert (state["step"], state["epoch"]) == (8, 2)


def test_resume_without_a_checkpoint_refuses_to_start_over(tmp_path):
    proc = run("simclr.py", "experiment=demo", *TINY, "resume=true", f"hydra.run.dir={tmp_path}",
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: resume=true but")


@pytest.mark.slow
def test_moco_original_command_runs(tmp_path):
    out = tmp_path / "moco"
    proc = run("moco.py", "backbone=resnet18", "batch_size=32", "moco_k=100", "moco_t=0.2",
               "dataset=spirograph", "dataset.num_train=96", "dataset.num_test=64",
               *[o for o in TINY if not o.startswith("batch_size")], "epochs=2", "max_steps=4",
               f"hydra.run.dir={out}")
    assert "knn_r2=" in proc.stdout
    state = _load(out)
    assert state["model"]["queue"].shape == (100, 128)
    assert int(state["model"]["queue_ptr"]) == (4 * 32) % 100        # wrapped around


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sogclr", "supervised"])
def test_the_supervised_baselines_test_accuracy_and_sogclrs_estimator_in_a_run(tmp_path, cifar_root, method):
    out = tmp_path / method
    proc = run("simclr.py", f"method={method}", *TINY, f"dataset.root={cifar_root}",
               "dataset.subset=64", "max_steps=3", f"hydra.run.dir={out}")
    assert "knn_top1=" in proc.stdout
    if method == "supervised":
        # the classifier's own test accuracy (SupCE's number), recomputed from the checkpoint
        from sslcifar.data.sources import build_source
        from sslcifar.methods import build_method
        from .test_config import compose_cfg
        row = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
        cfg = compose_cfg(overrides=["method=supervised", "backbone.width=8",
                                     f"dataset.root={cifar_root}"])
        model = build_method(cfg, 64, 10)
        model.load_state_dict(_load(out)["model"])
        test = build_source(cfg, "test", torch.device("cpu"))
        with torch.no_grad():
            logits = model.eval().classifier(model.backbone(test.plain(torch.arange(len(test)))))
        expected = 100.0 * (logits.argmax(1) == test.labels).float().mean().item()
        assert row["test_top1"] == pytest.approx(expected, abs=1e-6)
        assert f"test_top1={row['test_top1']:.4f}" in proc.stdout
        # the classifier's accuracy on its training batches: a percentage, as every accuracy
        assert 1.0 < row["train_top1"] <= 100
    if method == "sogclr":
        u = _load(out)["model"]["criterion.u"]
        assert u.shape == (64, 1) and (u > 0).sum() == 3 * 16     # 3 batches of 16 visited


@pytest.mark.slow
def test_multirun_gives_one_directory_per_combination(tmp_path):
    proc = run("simclr.py", "-m", "experiment=demo", *TINY, "dataset.num_train=64",
               "dataset.num_test=32", "max_steps=1", "loss.temperature=0.1,0.5",
               "batch_size=16,32", f"hydra.sweep.dir={tmp_path}/sweep")
    dirs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(dirs) == 4, dirs
    assert any("loss.temperature-0.1" in d and "batch_size-32" in d for d in dirs)
    assert all((tmp_path / "sweep" / d / "metrics.jsonl").exists() for d in dirs)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["precision=bf16", "channels_last=true", "compile=true",
                                    "dataset.pipeline=torchvision", "optimizer=lars",
                                    "optimizer=adamw", "scheduler=constant",
                                    "scheduler.warmup_epochs=1", "checkpoint_every=1",
                                    "eval.online_probe=false", "augment=moco_v2"])
def test_options_run_end_to_end(tmp_path, cifar_root, option):
    out = tmp_path / "run"
    proc = run("simclr.py", *TINY, f"dataset.root={cifar_root}", "dataset.subset=32", option,
               f"hydra.run.dir={out}")
    assert "final:" in proc.stdout
    if option == "checkpoint_every=1":
        assert (out / "checkpoints" / "epoch_1.pt").exists()
    if option == "eval.online_probe=false":
        assert "online_train_top1" not in (out / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_figures_at_the_end_of_pretraining(tmp_path, cifar_root):
    out = tmp_path / "run"
    run("simclr.py", *TINY, f"dataset.root={cifar_root}", "dataset.subset=32", "eval.tsne=true",
        "eval.tsne_points=100", f"hydra.run.dir={out}")
    for name in ("curves.png", "tsne.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_views_of_several_sizes_and_a_weight_decay_schedule_train_end_to_end(tmp_path, cifar_root):
    """SimCLR on 2 global + 2 small crops (multi-crop through the view groups), with the
    weight decay on a cosine from 1e-4 to 0.1: the optimizer's groups carry the scheduled
    value of the last step."""
    from sslcifar.schedule import cosine_scheduler
    proc = run("simclr.py", *TINY, f"dataset.root={cifar_root}", "dataset.subset=64",
               "augment.small_crops=2", "augment.small_size=16", "optimizer.weight_decay=1e-4",
               "scheduler.final_weight_decay=0.1", "eval.knn_every=0", f"hydra.run.dir={tmp_path}")
    assert "2x32px + 2x16px views" in proc.stderr + proc.stdout
    state = _load(tmp_path)
    assert state["step"] == 4
    wd = cosine_scheduler(1e-4, 0.1, 4).tolist()[3]
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [wd]


@pytest.mark.slow
def test_linear_evaluation_at_the_end_of_pretraining_lands_in_done_json_and_the_last_row(
        tmp_path, cifar_root):
    """eval.linear=fast: the run's own backbone, its training subset and the test split; the
    run records the code version too."""
    from .test_every_method import _train_in_process
    final = _train_in_process(tmp_path, [f"dataset.root={cifar_root}", "dataset.subset=64",
                                         "eval.linear=fast"])
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["linear_protocol"] == "fast" and 0 <= done["linear_top1"] <= 100
    assert _rows(tmp_path)[-1]["linear_top1"] == done["linear_top1"] == final["linear_top1"]
    assert _load(tmp_path)["code"]["commit"] == done["code"]["commit"]
    from sslcifar.linear_eval import evaluate_encoder, protocol_config
    from sslcifar.pretrained import load_checkpoint
    from sslcifar.data.sources import build_source
    from .test_config import compose_cfg
    cfg = compose_cfg(overrides=[*TINY, f"dataset.root={cifar_root}", "dataset.subset=64"])
    enc = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    again, _ = evaluate_encoder(enc.backbone, protocol_config("fast", cfg),
                                build_source(cfg, "train", torch.device("cpu")),
                                build_source(cfg, "test", torch.device("cpu")), torch.device("cpu"))
    assert again["top1"] == pytest.approx(done["linear_top1"], abs=1e-9)     # the same evaluation


@pytest.mark.slow
def test_a_warm_up_of_half_the_run_is_said_in_one_line(tmp_path):
    proc = run("simclr.py", "experiment=demo", *TINY, "dataset.num_train=32", "dataset.num_test=16",
               "max_steps=1", "scheduler.warmup_epochs=1", f"hydra.run.dir={tmp_path}")
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "half the run" in l]
    assert len(lines) == 1 and "scheduler.warmup_epochs=1 is half the run or more (epochs=1)" in lines[0]


@pytest.mark.slow
def test_a_finished_run_resumed_with_more_epochs_says_how_to_run_longer(tmp_path):
    common = ["experiment=demo", *TINY, "dataset.num_train=32", "dataset.num_test=16"]
    run("simclr.py", *common, "epochs=1", f"hydra.run.dir={tmp_path}")
    proc = run("simclr.py", *common, "epochs=2", "resume=true", f"hydra.run.dir={tmp_path}",
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path} finished its 1 epochs (done.json); resume=true does "
                           f"not extend a finished run") and "Fix: start a new run with epochs=2" in line
