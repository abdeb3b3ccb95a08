"""Linear evaluation: the recipes' pieces against references, the frozen-encoder check,
and the real entrypoints (linear_eval.py, python -m sslcifar.knn) on real CIFAR-10
images and on Spirograph."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from sslcifar import linear_eval as le
from sslcifar.data.sources import build_source
from sslcifar.eval_config import register_eval_configs
from sslcifar.models import build_backbone

from .conftest import REPO, TINY, needs_real_cifar, run
from .test_figures import assert_png
from .test_pretrained import _Exploit, fake_run

register_eval_configs()

# A SimCLR pretraining short enough for a test (128 steps, ~15 s on 2 CPU cores) whose
# encoder reliably beats its own random initialisation under the fast recipe
# (measured on the cifar_root images, seeds 0/1/2: 28.2/28.0/24.8% vs 23.8/21.2/22.4%).
PRETRAIN = [*TINY, "batch_size=32", "epochs=8", "dataset.subset=512", "optimizer.lr_scaling=none",
            "optimizer.lr=0.3", "loss.temperature=0.2"]
EVAL = ["device=cpu", "progress=false", "backbone.width=8"]


def compose_eval(overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="linear_eval", overrides=list(overrides))


# ---------------------------------------------------------------------- the pieces

def test_random_crop_flip_is_a_crop_of_the_padded_image_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = le.random_crop_flip(x, 2, fill, g)
    padded = F.pad(x - fill.view(1, 3, 1, 1), (2, 2, 2, 2)) + fill.view(1, 3, 1, 1)
    seen = set()
    for i in range(16):
        matches = [(dy, dx, fl) for dy in range(5) for dx in range(5) for fl in (0, 1)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if fl else c)(
                       padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"image {i} is not a (flipped) crop of its padded self"
        seen.add(matches[0])
    assert len(seen) > 8                                 # offsets and flips vary per image
    assert torch.equal(le.random_crop_flip(x, 0, fill, g).abs().sum(), x.abs().sum())


def test_fast_recipe_reaches_the_regularised_optimum():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 4
    f = 3 * torch.randn(4, 16, generator=g)[y] + torch.randn(300, 16, generator=g) + 5
    clf = le.fit_fast(f, y, 4, l2=1e-2, iterations=500, steps=1, line_search="strong_wolfe",
                      standardize=True)
    # at the optimum of a convex objective the gradient vanishes
    z = (f - clf.mean) / clf.std
    w = clf.fc.weight.detach().clone().requires_grad_(True)
    b = clf.fc.bias.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(z @ w.T + b, y) + 0.5e-2 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.norm() < 1e-4 and gb.norm() < 1e-4
    assert (clf(f).argmax(1) == y).float().mean() > 0.95
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def test_ridge_regression_is_least_squares():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 10, generator=g) * 4 + 2
    t = f[:, :3] @ torch.randn(3, 4, generator=g) + 0.1 * torch.randn(200, 4, generator=g)
    predict = le.ridge_regression(f[:150], t[:150], ridge=0.0)
    a = torch.cat([f[:150], torch.ones(150, 1)], 1).double()
    coef = torch.linalg.lstsq(a, t[:150].double()).solution
    ref = (torch.cat([f[150:], torch.ones(50, 1)], 1).double() @ coef).float()
    torch.testing.assert_close(predict(f[150:]), ref, atol=1e-4, rtol=1e-4)


def test_classification_scores_by_hand():
    logits = torch.tensor([[3., 2., 1.], [1., 3., 2.], [3., 1., 2.], [1., 2., 3.]])
    labels = torch.tensor([0, 2, 1, 2])
    s = le.classification_scores(logits, labels, ["a", "b", "c"])
    assert s["top1"] == 50.0 and s["top5"] == 100.0
    assert s["per_class"] == {"a": 100.0, "b": 0.0, "c": 50.0}
    assert s["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]


def test_the_frozen_encoder_check_catches_any_change():
    torch.manual_seed(0)
    net = build_backbone("resnet18", 4, "cifar", 32).eval()
    before = le.snapshot(net)
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32))                   # eval mode: nothing changes
    le.assert_unchanged(net, before)

    def changed(edit):
        copy = build_backbone("resnet18", 4, "cifar", 32)
        copy.load_state_dict(before)
        edit(copy)
        with pytest.raises(le.BackboneChanged, match="the frozen encoder changed"):
            le.assert_unchanged(copy, before)

    def one_ulp(m):
        w = m.layer3[0].conv2.weight.data.view(-1)
        w[7] = torch.nextafter(w[7], torch.tensor(math.inf))
    changed(one_ulp)
    changed(lambda m: m.layer1[1].bn2.running_mean.add_(1e-7))
    changed(lambda m: m.bn1.num_batches_tracked.add_(1))
    changed(lambda m: m.train()(torch.randn(4, 3, 32, 32)))                  # BN statistics move


@needs_real_cifar
def test_standard_recipe_leaves_the_encoder_bit_identical_and_learns(cifar_root):
    cfg = compose_eval([*EVAL, f"dataset.root={cifar_root}", "dataset.subset=128",
                        "batch_size=32", "epochs=20", "pretrained=random", "lr=1.0"])
    torch.manual_seed(0)
    net = build_backbone("resnet18", 8, "cifar", 32).eval()
    before = le.snapshot(net)
    src = build_source(cfg, "train", torch.device("cpu"))
    index = torch.arange(len(src))
    feats = le.extract(net, src, index, 64)
    fit = le.fit_sgd(net, src, index, src.labels, 10, le.feature_stats(feats), cfg,
                          torch.device("cpu"))
    le.assert_unchanged(net, before)
    for k, v in net.state_dict().items():                # and once more, spelled out
        assert torch.equal(v, before[k]), k
    assert fit["steps"] == 80 and fit["epochs"] == 20
    train_acc = (fit["classifier"](feats).argmax(1) == src.labels).float().mean()
    assert train_acc > 0.2                               # 10 classes: well above chance


def test_max_steps_weight_decay_and_seed_of_the_standard_recipe(cifar_root):
    def fit(*overrides):
        cfg = compose_eval([*EVAL, f"dataset.root={cifar_root}", "dataset.subset=64",
                            "batch_size=16", "epochs=3", "pretrained=random", *overrides])
        torch.manual_seed(0)
        net = build_backbone("resnet18", 4, "cifar", 32).eval()
        src = build_source(cfg, "train", torch.device("cpu"))
        index = torch.arange(len(src))
        stats = le.feature_stats(le.extract(net, src, index, 64))
        return le.fit_sgd(net, src, index, src.labels, 10, stats, cfg, torch.device("cpu"))
    a = fit("max_steps=6")
    assert a["steps"] == 6 and a["epochs"] == 1.5           # stops mid-epoch
    same = fit("max_steps=6", "progress=true")
    torch.testing.assert_close(a["classifier"].fc.weight, same["classifier"].fc.weight,
                               rtol=0, atol=0)
    decayed = fit("max_steps=6", "weight_decay=0.5")
    assert decayed["classifier"].fc.weight.norm() < a["classifier"].fc.weight.norm()
    reseeded = fit("max_steps=6", "seed=1")
    assert not torch.equal(reseeded["classifier"].fc.weight, a["classifier"].fc.weight)


def test_a_changed_encoder_fails_the_run_loudly(cifar_root, tmp_path, monkeypatch):
    """The check is wired into linear_eval: an encoder changed during fitting is an error."""
    real = le.fit_sgd

    def fit_and_break(backbone, *args, **kwargs):
        out = real(backbone, *args, **kwargs)
        backbone.layer4[1].bn2.running_var.mul_(1.0001)
        return out
    monkeypatch.setattr(le, "fit_sgd", fit_and_break)
    cfg = compose_eval([*EVAL, "backbone.width=4", f"dataset.root={cifar_root}",
                        "dataset.subset=32", "batch_size=32", "epochs=1", "pretrained=random",
                        "recipe=standard"])
    with pytest.raises(le.BackboneChanged, match="layer4.1.bn2.running_var"):
        le.linear_eval(cfg, tmp_path)
    assert not (tmp_path / "linear_eval.json").exists()
    assert not (tmp_path / "confusion_matrix.png").exists()


# ---------------------------------------------------------------------- the entrypoints

@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory, cifar_root):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    run("simclr.py", *PRETRAIN, f"dataset.root={cifar_root}", f"hydra.run.dir={out}")
    return out


@pytest.fixture(scope="module")
def evaluate(tmp_path_factory, cifar_root):
    """linear_eval.py on the cifar_root images, memoised: overrides -> (json, stdout)."""
    cache = {}

    def go(*overrides):
        if overrides not in cache:
            out = tmp_path_factory.mktemp("linear_eval")
            proc = run("linear_eval.py", *EVAL, f"dataset.root={cifar_root}", *overrides,
                       f"hydra.run.dir={out}")
            cache[overrides] = (json.loads((out / "linear_eval.json").read_text()),
                                proc.stdout, out)
        return cache[overrides]
    return go


@needs_real_cifar
@pytest.mark.slow
def test_pretrained_encoder_beats_its_random_initialisation(simclr_run, evaluate):
    trained, stdout, out = evaluate(f"pretrained={simclr_run}", "recipe=fast")
    random, _, _ = evaluate("pretrained=random", "recipe=fast")
    assert trained["top1"] > random["top1"] + 2, (trained["top1"], random["top1"])
    ckpt = str(simclr_run / "checkpoints" / "last.pt")
    assert stdout.strip().splitlines()[-1] == \
        f"linear_eval: top1={trained['top1']:.2f} top5={trained['top5']:.2f} (fast, {ckpt})"
    assert trained["checkpoint"] == ckpt and random["checkpoint"] == "random"
    assert (trained["num_train"], trained["num_test"]) == (1000, 500)
    assert trained["recipe"] == "fast" and trained["backbone"] == \
        {"name": "resnet18", "width": 8, "stem": "cifar"}
    assert set(trained["per_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog",
                                         "frog", "horse", "ship", "truck"}
    conf = torch.tensor(trained["confusion_matrix"])
    assert conf.sum() == 500 and abs(conf.trace() / 5 - trained["top1"]) < 1e-9
    assert trained["top1"] <= trained["top5"] <= 100
    assert_png(out / "confusion_matrix.png")


@needs_real_cifar
@pytest.mark.slow
def test_fast_and_standard_recipes_agree(simclr_run, evaluate):
    fast, _, _ = evaluate(f"pretrained={simclr_run}", "recipe=fast")
    std, stdout, out = evaluate(f"pretrained={simclr_run}", "recipe=standard", "epochs=10",
                                "batch_size=64")
    assert abs(fast["top1"] - std["top1"]) <= 4, (fast["top1"], std["top1"])
    assert std["recipe"] == "standard" and std["epochs"] == 10 and std["steps"] == 160
    assert "(standard, " in stdout.strip().splitlines()[-1]
    assert_png(out / "confusion_matrix.png")


@pytest.mark.slow
def test_spirograph_r2_of_a_trained_encoder_beats_a_random_one(tmp_path):
    spiro = ["dataset=spirograph", "dataset.num_train=1024", "dataset.num_test=512"]
    run("simclr.py", *TINY, "dataset=spirograph", "dataset.num_train=512", "dataset.num_test=64",
        "batch_size=32", "epochs=4", "optimizer.lr_scaling=none", "optimizer.lr=0.3",
        "loss.temperature=0.2", f"hydra.run.dir={tmp_path / 'pre'}")
    scores = {}
    for name in ("pre", "random"):
        pretrained = tmp_path / "pre" if name == "pre" else "random"
        proc = run("linear_eval.py", *EVAL, *spiro, f"pretrained={pretrained}",
                   f"hydra.run.dir={tmp_path / ('eval_' + name)}")
        scores[name] = json.loads((tmp_path / f"eval_{name}" / "linear_eval.json").read_text())
        assert proc.stdout.strip().splitlines()[-1].startswith("linear_eval: r2=")
        assert not (tmp_path / f"eval_{name}" / "confusion_matrix.png").exists()
    pre, rnd = scores["pre"], scores["random"]
    assert pre["task"] == "regression" and pre["recipe"] == "ridge"
    assert set(pre["r2_per_parameter"]) == {"m", "b", "sigma", "red"}
    assert abs(pre["r2"] - sum(pre["r2_per_parameter"].values()) / 4) < 1e-9
    assert pre["r2"] > rnd["r2"] + 0.05, (pre, rnd)
    # the foreground red is a generative parameter while the other colours are nuisance:
    # contrastive training on re-drawn nuisance makes it linearly readable
    assert pre["r2_per_parameter"]["red"] > rnd["r2_per_parameter"]["red"] + 0.3


@pytest.mark.slow
def test_without_pretrained_the_newest_matching_run_is_used(tmp_path, cifar_root):
    out = tmp_path / "outputs"
    fake_run(out, "simclr/2026-01-01_00-00-00", 8, 1000)
    newest = fake_run(out, "multirun/simclr/2026-01-02_00-00-00/1_loss.temperature=0.2", 8, 2000)
    fake_run(out, "moco/2026-01-03_00-00-00", 16, 3000)
    proc = run("linear_eval.py", *EVAL, f"dataset.root={cifar_root}", "dataset.subset=100",
               "recipe=fast", "hydra.run.dir=le", cwd=tmp_path)
    logs = proc.stdout + proc.stderr
    assert f"pretrained=null: using the newest resnet18 (width 8) run {newest.parent.parent}" in logs
    result = json.loads((tmp_path / "le" / "linear_eval.json").read_text())
    assert result["checkpoint"] == str(newest) and result["num_train"] == 100

    proc = run("linear_eval.py", *EVAL, "backbone=resnet50", f"dataset.root={cifar_root}",
               "hydra.run.dir=le2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no pretraining run with backbone resnet50 (width 8) found "
                           f"under {out}") and "Fix: pretrained=PATH" in last


@pytest.mark.parametrize("override,message", [
    ("recipe=slow", "recipe=slow is not allowed: use one of fast, standard"),
    ("epochs=0", "epochs=0 is not allowed: needs >= 1"),
    ("lr=0", "lr=0.0 is not allowed: needs > 0"),
    ("l2=-1", "l2=-1.0 is not allowed: needs >= 0"),
    ("ridge=-1", "ridge=-1.0 is not allowed: needs >= 0"),
    ("max_steps=0", "max_steps=0 is not allowed"),
    ("batch_size=0", "batch_size=0 is not allowed"),
    ("device=tpu", "device=tpu is not allowed"),
])
def test_bad_values_are_user_errors(override, message):
    from sslcifar.errors import UserError
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        le.validate(compose_eval([override]))


@pytest.mark.slow
def test_a_malicious_checkpoint_is_a_one_line_error_and_runs_nothing(tmp_path, cifar_root):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": _Exploit(marker)}, tmp_path / "evil.pt")
    proc = run("linear_eval.py", *EVAL, f"dataset.root={cifar_root}",
               f"pretrained={tmp_path / 'evil.pt'}", f"hydra.run.dir={tmp_path / 'le'}",
               check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: checkpoint {tmp_path / 'evil.pt'} refused")
    assert not marker.exists()


@pytest.mark.slow
def test_knn_command_line(simclr_run, cifar_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, "-m", "sslcifar.knn", f"pretrained={simclr_run}", "k=20", "max_train=300",
         "temperature=0.07", f"dataset.root={cifar_root}", "device=cpu", "progress=false",
         f"hydra.run.dir={tmp_path / 'knn'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "knn" / "knn.json").read_text())
    ckpt = simclr_run / "checkpoints" / "last.pt"
    assert proc.stdout.strip().splitlines()[-1] == \
        f"knn: top1={result['knn_top1']:.2f} (k=20, T=0.07, {ckpt})"
    assert (result["k"], result["temperature"], result["num_train"], result["num_test"]) == \
        (20, 0.07, 300, 500)
    assert 10 < result["knn_top1"] < 100
    assert (tmp_path / "knn" / "knn.log").exists()          # named by the command, not __main__


@pytest.mark.slow
def test_linear_eval_reads_the_data_where_the_pretraining_run_did(simclr_run, tmp_path):
    """No dataset.root on the command line (and $SSLCIFAR_DATA pointing elsewhere): the
    run's own root, as a SimCLR-CIFAR10 user expects."""
    proc = run("linear_eval.py", *EVAL, f"pretrained={simclr_run}", "recipe=fast",
               f"hydra.run.dir={tmp_path / 'le'}", env={"SSLCIFAR_DATA": str(tmp_path / "none")})
    assert "(the pretraining run's)" in proc.stdout + proc.stderr
    assert 0 <= json.loads((tmp_path / "le" / "linear_eval.json").read_text())["top1"] <= 100


# ---------------------------------------------------------------------- the originals' protocols

@pytest.mark.parametrize("name, expected", [
    ("supcontrast", dict(lr=0.1, batch_size=256, epochs=100, schedule="step", schedule_unit="epoch",
                         milestones=[60, 75, 90], lr_gamma=0.2, train_augment="resized_crop_flip",
                         crop_scale=[0.2, 1.0], standardize=False, weight_decay=0.0, report="best",
                         finetune=False)),
    ("moco", dict(lr=30.0, batch_size=256, epochs=100, schedule="step", milestones=[60, 80],
                  lr_gamma=0.1, fc_init="normal", standardize=False, report="best", finetune=False)),
    ("sogclr", dict(lr=0.4, batch_size=1024, epochs=90, schedule="cosine", schedule_unit="epoch",
                    fc_init="normal", weight_decay=0.0, report="best")),
    ("simclr_cifar10", dict(lr=0.2, nesterov=True, batch_size=512, drop_last=True, finetune=True,
                            schedule="simclr_cifar10", report="lowest_train_loss")),
    ("solo", dict(lr=1.0, batch_size=256, epochs=100, schedule="step", milestones=[60, 80],
                  lr_gamma=0.1, crop_scale=[0.08, 1.0], standardize=False, report="last")),
    ("invclr", dict(recipe="fast", standardize=False, l2=2e-5, lbfgs_steps=500, lbfgs_max_iter=20,
                    lbfgs_line_search="none")),
    ("fast", dict(recipe="fast", standardize=True, l2=1e-3, lbfgs_steps=1, lbfgs_max_iter=500)),
    ("standard", dict(recipe="standard", lr=0.1, schedule="cosine", schedule_unit="step",
                      train_augment="crop_flip", standardize=True, report="last")),
])
def test_each_protocol_is_its_repositorys_evaluation(name, expected):
    """The numbers read from each original's evaluation script (README: Evaluation)."""
    cfg = compose_eval([f"protocol={name}"])
    assert cfg.protocol == name
    for key, value in expected.items():
        assert (list(cfg[key]) if key in ("milestones", "crop_scale") else cfg[key]) == value, key
    le.validate(cfg)


def test_probe_schedules_are_the_originals_closed_forms():
    def lr(protocol, epoch, step=None, steps_per_epoch=10, **over):
        cfg = compose_eval([f"protocol={protocol}", *[f"{k}={v}" for k, v in over.items()]])
        lrs = le.probe_lrs(cfg, steps_per_epoch)
        assert len(lrs) == cfg.epochs * steps_per_epoch
        return lrs[epoch * steps_per_epoch if step is None else step]
    # SupContrast: x0.2 after 60, 75, 90 (its 1-based epochs 61, 76, 91)
    assert [lr("supcontrast", e) for e in (0, 59, 60, 75, 90, 99)] == \
        pytest.approx([0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008])
    assert [lr("moco", e) for e in (59, 60, 80)] == pytest.approx([30.0, 3.0, 0.3])
    # SogCLR: per epoch, lr (1 + cos(pi e / 90)) / 2, never 0
    assert lr("sogclr", 45) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr("sogclr", 89) > 0
    # SimCLR-CIFAR10's LambdaLR over "1000 epochs": 0.2 x ~0.6 at the start
    assert lr("simclr_cifar10", 0, step=0) == pytest.approx(0.2 * 0.6)
    assert lr("simclr_cifar10", 99, step=999, steps_per_epoch=10) == \
        pytest.approx(0.2 * (1e-3 + 0.599 * 0.5 * (1 + math.cos(math.pi * 999 / 10000))))
    # ours: cosine per step to 0 at the last step
    assert lr("standard", 0, step=0, epochs=2) == pytest.approx(0.1)
    assert lr("standard", 1, step=19, epochs=2) == pytest.approx(0.0, abs=1e-12)


def test_reported_epoch_last_best_or_lowest_training_loss():
    history = [{"epoch": 0, "train_loss": 2.0, "test_top1": 30.0},
               {"epoch": 1, "train_loss": 1.0, "test_top1": 50.0},
               {"epoch": 2, "train_loss": 1.5, "test_top1": 40.0}]
    assert le.reported_epoch(history, "last")["epoch"] == 2
    assert le.reported_epoch(history, "best")["epoch"] == 1
    assert le.reported_epoch(history, "lowest_train_loss")["epoch"] == 1
    history[2]["train_loss"] = 0.5
    assert le.reported_epoch(history, "lowest_train_loss")["test_top1"] == 40.0


def test_fc_init_normal_is_mocos():
    cfg = compose_eval([*EVAL, "protocol=moco", "dataset=spirograph", "dataset.num_train=32",
                        "max_steps=1", "lr=1e-12", "batch_size=8", "epochs=1"])
    torch.manual_seed(0)
    net = build_backbone("resnet18", 4, "cifar", 32).eval()
    src = build_source(cfg, "train", torch.device("cpu"))
    labels = torch.arange(32) % 4
    fit = le.fit_sgd(net, src, torch.arange(32), labels, 4, le._identity_stats(torch.zeros(1, 32)),
                     cfg, torch.device("cpu"))
    w = fit["classifier"].fc
    assert abs(w.weight.std().item() - 0.01) < 0.003 and torch.all(w.bias.abs() < 1e-9)


@needs_real_cifar
@pytest.mark.slow
def test_protocols_run_end_to_end_and_report_as_their_repositories(simclr_run, evaluate):
    """SupContrast's: frozen, the best epoch's top-1; SimCLR-CIFAR10's: the encoder
    fine-tuned (so no bit-identity check), the lowest-training-loss epoch; invclr's L-BFGS."""
    sup, stdout, _ = evaluate(f"pretrained={simclr_run}", "protocol=supcontrast", "epochs=4",
                              "milestones=[2,3]", "batch_size=128")
    assert sup["protocol"] == "supcontrast" and sup["report"] == "best" and not sup["finetune"]
    scores = [r["test_top1"] for r in sup["history"]]
    assert len(scores) == 4 and sup["top1"] == max(scores) == sup["top1_best"]
    assert sup["top1_last"] == pytest.approx(scores[-1])
    assert "(supcontrast, " in stdout.strip().splitlines()[-1]
    fine, _, _ = evaluate(f"pretrained={simclr_run}", "protocol=simclr_cifar10", "epochs=2",
                          "batch_size=128")
    assert fine["finetune"] and fine["report"] == "lowest_train_loss"
    lowest = min(fine["history"], key=lambda r: r["train_loss"])
    assert fine["top1"] == lowest["test_top1"] and fine["top1_epoch"] == lowest["epoch"]
    emp, _, _ = evaluate(f"pretrained={simclr_run}", "protocol=emp_ssl", "passes=2", "epochs=3")
    assert emp["inputs"] == "transformed" and emp["passes"] == 2 and emp["report"] == "best"
    scores = [r["test_top1"] for r in emp["history"]]
    assert len(scores) == 3 and emp["top1"] == max(scores) and emp["batch_size"] == 100
    inv, _, _ = evaluate(f"pretrained={simclr_run}", "protocol=invclr", "lbfgs_steps=20")
    fast, _, _ = evaluate(f"pretrained={simclr_run}", "recipe=fast")
    assert inv["standardize"] is False and abs(inv["top1"] - fast["top1"]) < 8


def test_emp_ssl_protocol_averages_patches_and_fits_sgd_on_the_cached_features():
    """protocol=emp_ssl: one quarter-image patch per pass, 128 passes, and SGD on the
    features computed once (no image is read while fitting: the source is None here)."""
    cfg = compose_eval([*EVAL, "protocol=emp_ssl"])
    assert (cfg.inputs, cfg.passes, cfg.train_augment, cfg.report) == ("transformed", 128, "cached", "best")
    assert list(cfg.augment.crop_scale) == [0.25, 0.25] and cfg.augment.groups[0].count == 1
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    feats = torch.randn(200, 6, generator=g) + 3 * F.one_hot(labels, 6).float()   # separable
    cfg.epochs = 20
    fit = le.fit_sgd(torch.nn.Identity(), None, torch.arange(200), labels, 2,
                     le._identity_stats(feats), cfg, torch.device("cpu"), cached=feats)
    assert (fit["classifier"](feats).argmax(1) == labels).float().mean() > 0.95


# ---------------------------------------------------------------------- the invariance reproduction's evaluation

def test_feature_averaging_is_the_mean_of_the_passes():
    cfg = compose_eval([*EVAL, "dataset=spirograph", "dataset.num_train=16", "dataset.num_test=8"])
    src = build_source(cfg, "test", torch.device("cpu"), augment=True)
    torch.manual_seed(0)
    net = build_backbone("resnet18", 4, "cifar", 32).eval()
    index = torch.arange(8)
    avg = le.averaged_features(net, src, index, 4, passes=3, seed=5)
    g = torch.Generator().manual_seed(5)
    passes = []
    with torch.no_grad():
        for _ in range(3):
            passes.append(torch.cat([net(src.views(index[i:i + 4], g)[0][0]) for i in (0, 4)]))
    torch.testing.assert_close(avg, torch.stack(passes).mean(0))
    assert not torch.allclose(passes[0], passes[1])                  # fresh nuisance per pass


@pytest.mark.slow
def test_spirograph_lbfgs_regression_reports_mse_beside_r2_and_the_measured_invariance(tmp_path):
    spiro = ["dataset=spirograph", "dataset.num_train=256", "dataset.num_test=128",
             "pretrained=random", "backbone.width=4", "device=cpu", "progress=false"]
    run("linear_eval.py", *spiro, "regression=lbfgs", "lbfgs_steps=20", "inputs=transformed",
        "passes=2", "invariance_images=16", "invariance_samples=10", f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "linear_eval.json").read_text())
    assert res["recipe"] == "lbfgs" and res["inputs"] == "transformed" and res["passes"] == 2
    assert set(res["mse_per_parameter"]) == {"m", "b", "sigma", "red"}
    assert res["mse"] == pytest.approx(sum(res["mse_per_parameter"].values()) / 4)
    assert res["invariance"] > 0
    proc = run("linear_eval.py", *spiro, "passes=3", f"hydra.run.dir={tmp_path}/bad", check=False)
    assert proc.returncode == 2 and "passes=3 is not allowed: feature averaging needs " \
        "transformed inputs" in proc.stderr


def test_measured_invariance_is_zero_for_an_encoder_blind_to_the_nuisance():
    from sslcifar.invariance import measure_invariance
    cfg = compose_eval([*EVAL, "dataset=spirograph", "dataset.num_train=16", "dataset.num_test=16"])
    src = build_source(cfg, "test", torch.device("cpu"), augment=True)
    torch.manual_seed(0)
    net = build_backbone("resnet18", 4, "cifar", 32).eval()
    sensitive = measure_invariance(net, src, num_images=16, samples=8, batch_size=8)
    assert sensitive > 0
    blind = torch.nn.Sequential(net, torch.nn.Identity()).eval()
    with torch.no_grad():
        net.fc = torch.nn.Identity()
        for p in net.parameters():
            p.zero_()
    assert measure_invariance(blind, src, num_images=16, samples=8, batch_size=8) == 0.0
    assert not net.training                                  # left in the mode it found it


@pytest.mark.slow
def test_a_protocol_whose_batch_exceeds_the_data_trains_on_one_smaller_batch(cifar_root, tmp_path):
    """protocol=simclr_cifar10 (batch 512, drop_last) on 256 images: one batch of 256 per
    epoch, saying so (before: UnboundLocalError in fit_sgd)."""
    proc = run("linear_eval.py", *EVAL, "pretrained=random", f"dataset.root={cifar_root}",
               "dataset.subset=256", "protocol=simclr_cifar10", "epochs=2",
               f"hydra.run.dir={tmp_path}")
    result = json.loads((tmp_path / "linear_eval.json").read_text())
    assert result["steps"] == 2 and len(result["history"]) == 2
    assert "larger than the 256 training images" in proc.stderr + proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("linear_eval: top1=")


# ---------------------------------------------------------------------- layer-wise lr decay

def _mae_layer_id(name: str, num_layers: int) -> int:
    """MAE's get_layer_id_for_vit (util/lr_decay.py, facebookresearch/mae efb2a80), written
    out again on timm's names."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def test_layer_decay_groups_scale_each_block_as_maes_fine_tuning():
    """A 2-block ViT, layer_decay 0.5: embeddings lr x 0.125, block 0 x 0.25, block 1 x 0.5,
    the final norm and the classifier x 1; 1-D parameters, the position embedding and the
    class token without weight decay. One AdamW step (its first update is lr x sign(grad) per
    element) moves each parameter by exactly lr x its scale."""
    from sslcifar.models import backbone_from_config
    from .conftest import TINY_BACKBONES
    from .test_config import compose_cfg
    torch.manual_seed(0)
    backbone = backbone_from_config(compose_cfg("simclr", TINY_BACKBONES["vit_tiny"]).backbone, 32)
    clf = le.LinearClassifier(torch.zeros(backbone.num_features), torch.ones(backbone.num_features), 10)
    cfg = compose_eval(["finetune=true", "layer_decay=0.5", "opt=adamw", "weight_decay=0.05",
                        "lr=1e-3"])
    opt = le.probe_optimizer(clf, backbone, cfg)
    scale_of, decay_of = {}, {}
    for g in opt.param_groups:
        for p in g["params"]:
            scale_of[id(p)], decay_of[id(p)] = g.get("lr_scale", 1.0), g["weight_decay"]
    names = dict(backbone.named_parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names) + 2   # + fc weight, bias
    for name, p in names.items():
        short = name[len("model."):]
        assert scale_of[id(p)] == 0.5 ** (3 - _mae_layer_id(short, 3)), name
        no_decay = p.ndim == 1 or short in ("pos_embed", "cls_token")
        assert decay_of[id(p)] == (0.0 if no_decay else 0.05), name
    assert {scale_of[id(p)] for p in clf.parameters()} == {1.0}
    assert decay_of[id(clf.fc.bias)] == 0.0
    # one step as the loop takes it: each group's lr is the schedule's times its scale
    for g in opt.param_groups:
        g["lr"], g["weight_decay"] = 1e-3 * g.get("lr_scale", 1.0), 0.0
    before = {n: p.detach().clone() for n, p in names.items()}
    x = torch.randn(8, 3, 32, 32)
    F.cross_entropy(clf(backbone(x)), torch.arange(8)).backward()
    opt.step()
    for n in ("model.patch_embed.proj.weight", "model.blocks.0.mlp.fc1.weight",
              "model.blocks.1.attn.qkv.weight", "model.norm.weight"):
        moved = (names[n] - before[n]).abs()
        moved = moved[names[n].grad.abs() > 1e-4]      # Adam's eps 1e-8: < 1e-4 of these
        expect = 1e-3 * 0.5 ** (3 - _mae_layer_id(n[len("model."):], 3))
        assert moved.numel() >= 16
        torch.testing.assert_close(moved, torch.full_like(moved, expect), rtol=1e-3, atol=0)


def test_layer_decay_fine_tunes_a_vit_and_refuses_what_it_cannot(cifar_root, tmp_path):
    """linear_eval.py finetune=true opt=adamw layer_decay=0.65 trains a tiny ViT end to end;
    layer_decay without finetune, or on a ResNet, ends in one line naming the fix."""
    from .conftest import TINY_BACKBONES
    common = ["device=cpu", "progress=false", f"dataset.root={cifar_root}", "dataset.subset=32",
              "batch_size=16", "epochs=1", "pretrained=random"]
    proc = run("linear_eval.py", *common, *TINY_BACKBONES["vit_tiny"], "finetune=true",
               "opt=adamw", "layer_decay=0.65", "lr=1e-3", "weight_decay=0.05",
               f"hydra.run.dir={tmp_path / 'vit'}")
    result = json.loads((tmp_path / "vit" / "linear_eval.json").read_text())
    assert result["finetune"] and 0 <= result["top1"] <= 100, proc.stdout
    for extra, says in ((["layer_decay=0.65"], "add finetune=true"),
                        (["backbone.width=4", "finetune=true", "layer_decay=0.65"], "needs a ViT encoder")):
        proc = run("linear_eval.py", *common, *extra, f"hydra.run.dir={tmp_path / 'bad'}", check=False)
        assert proc.returncode == 2 and says in proc.stderr.strip().splitlines()[-1], proc.stderr
