"""User errors end with one clear line naming the problem and the fix, a
non-zero exit, no traceback, and nothing already saved is lost."""
import pytest

from sslcifar.methods import METHODS

from .conftest import TINY, run


def _user_error(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.mark.parametrize("override, expected", [
    ("batch_size=0", "batch_size=0 is not allowed"),
    ("batch_size=1", "batch_size=1 is not allowed: needs >= 2 for a contrastive loss"),
    ("loss.temperature=0", "loss.temperature=0.0 is not allowed: needs > 0"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not allowed"),
    ("dataset.size=4", "dataset.size=4 is not allowed: the cifar stem needs images of at least 8px"),
    ("method=supcon", "method=supcon is not allowed: needs labels"),
    ("method=supervised", "method=supervised is not allowed: needs labels"),
    ("loss=supcon", "loss=supcon is not allowed: method=simclr trains with loss=nt_xent"),
    ("precision=fp16", "precision=fp16 is not allowed on CPU"),
    ("augment.crop_scale=[0.5,0.1]", "augment.crop_scale=[0.5,0.1] is not allowed: needs low <= high"),
    ("dataset.pipeline=dala", "dataset.pipeline=dala is not allowed: use one of auto, device, stream, dali, torchvision"),
    ("dataset.pipeline=dali", "dataset.pipeline=dali is not allowed: streams image folders"),
    ("batch_size=5000", "batch_size=5000 is not allowed: the training split has only 64 images"),
    ("eval.knn_k=0", "eval.knn_k=0 is not allowed: needs >= 1"),
    ("log_every=0", "log_every=0 is not allowed: needs >= 1"),
    ("dataset.placement=gpu", "dataset.placement=gpu is not allowed: use one of auto, device, host"),
    # Hydra's own hint for a misspelt key is to add it with '+': then it would be ignored
    ("+loss.temprature=0.1", "loss.temprature is not a config key. Fix: use loss.temperature"),
    ("+epoch=3", "epoch is not a config key. Fix: use epochs"),
])
def test_invalid_values_are_rejected_before_training(tmp_path, override, expected):
    proc = run("simclr.py", "dataset=spirograph", *TINY, "dataset.num_train=64", "dataset.num_test=32",
               override, f"hydra.run.dir={tmp_path}", check=False)
    assert expected in _user_error(proc)
    assert not (tmp_path / "checkpoints").exists()          # no training started


def test_moco_queue_smaller_than_batch(tmp_path):
    proc = run("moco.py", "dataset=spirograph", *TINY, "moco_k=8", f"hydra.run.dir={tmp_path}",
               check=False)
    assert "moco_k (method.queue_size)=8 is not allowed: needs >= the keys enqueued per step (16)" \
        in _user_error(proc)


def test_moco_bn_splits_must_divide_the_batch(tmp_path):
    proc = run("moco.py", "dataset=spirograph", *TINY, "method.bn_splits=3",
               f"hydra.run.dir={tmp_path}", check=False)
    assert "method.bn_splits=3 is not allowed: must divide the batch of each process (16)" \
        in _user_error(proc)


def test_missing_cifar_says_where_it_looked_and_how_to_fix(tmp_path):
    proc = run("simclr.py", *TINY, f"dataset.root={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/r",
               check=False)
    line = _user_error(proc)
    assert f"{tmp_path}/nothing/cifar-10-batches-py" in line and "dataset.download=true" in line


def test_empty_imagefolder(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    proc = run("simclr.py", "dataset=imagefolder", f"dataset.root={tmp_path}/imgs", *TINY,
               f"hydra.run.dir={tmp_path}/r", check=False)
    assert "no images found under" in _user_error(proc)


def test_subset_larger_than_the_dataset(tmp_path, cifar_root):
    proc = run("simclr.py", *TINY, f"dataset.root={cifar_root}", "dataset.subset=100000",
               f"hydra.run.dir={tmp_path}", check=False)
    assert "dataset.subset=100000 is larger than the cifar10 training split (1000 images)" \
        in _user_error(proc)


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run("simclr.py", "experiment=demo", *TINY, f"run_dir={blocker}/run",
               f"hydra.run.dir={tmp_path}/h", check=False)
    assert f"output directory {blocker}/run is not writable" in _user_error(proc)


@pytest.mark.parametrize("override, expected", [
    ("loss.temprature=0.1", "loss.temprature is not a config key. Fix: use loss.temperature"),
    ("batch_size=big", "batch_size=big: Value 'big' of type 'str' could not be converted to "
                       "Integer. Fix: give batch_size a value of its type"),
    ("backbone=resnet1000", "backbone=resnet1000 is not an option of backbone. "
                            "Fix: use one of convnext_tiny, resnet18, resnet34, resnet50, "
                            "swin_tiny, timm, vit_base, vit_small, vit_tiny, wide_resnet28w2, "
                            "wide_resnet28w8"),
    ("hydra/launcher=slurmm", "hydra/launcher=slurmm is not an option of hydra/launcher. Fix: "
                              "use one of basic, local, slurm, submitit_local, submitit_slurm"),
    ("loss.temperature=0.1,0.5", "loss.temperature=0.1,0.5 lists several values. Fix: add -m"),
    ("hydra.launcher.partition=gpu", "hydra.launcher.partition is not a config key. Fix: "
                                     "choose the launcher first (hydra/launcher=slurm or local)"),
])
def test_composition_errors_are_one_line_naming_the_override_and_the_fix(tmp_path, override,
                                                                          expected):
    proc = run("simclr.py", override, f"hydra.run.dir={tmp_path}", check=False)
    assert _user_error(proc).startswith(f"error: {expected}")
    assert len(proc.stderr.strip().splitlines()) == 1                      # one line only
    assert not tmp_path.exists() or not any(tmp_path.iterdir())            # nothing written


def test_an_added_key_is_refused_by_the_evaluation_commands_too(tmp_path):
    proc = run("linear_eval.py", "+lrr=0.1", f"hydra.run.dir={tmp_path}", check=False)
    assert "lrr is not a config key. Fix: use lr" in _user_error(proc)


@pytest.mark.parametrize("override, expected", [
    ("dataset.mean=[0.5,0.5]", "dataset.mean=[0.5,0.5] is not allowed: needs 3 values"),
    ("dataset.std=[0,0,0]", "dataset.std=[0.0,0.0,0.0] is not allowed: needs each value > 0"),
    ("method.num_views=3", "method.num_views is not a config key. Fix: use augment.groups.0.count"),
    ("augment.small_crops=-1", "augment.small_crops=-1 is not allowed: needs >= 0"),
])
def test_bad_data_and_view_settings_are_one_line_before_any_data_is_read(tmp_path, override, expected):
    """No data folder exists here: the error must come before the loader looks for one."""
    proc = run("simclr.py", *TINY, f"dataset.root={tmp_path}/none", override,
               f"hydra.run.dir={tmp_path}/run", check=False)
    assert expected in _user_error(proc)


def test_a_method_that_takes_two_views_refuses_three_in_one_line(tmp_path):
    proc = run("moco.py", "dataset=spirograph", *TINY, "augment.groups.0.count=3",
               f"hydra.run.dir={tmp_path}", check=False)
    assert ("augment.groups gives 3 view(s) per image, but method=moco takes exactly 2"
            in _user_error(proc))


@pytest.mark.parametrize("script, override, expected", [
    ("linear_eval.py", "load_epoch=100", "load_epoch is not a config key. Fix: use "
                                         "pretrained=RUN_DIR/checkpoints/epoch_N.pt"),
    ("simclr.py", "moco_k=4096", "moco_k is not a config key. Fix: use method.queue_size (under "
                                 "method=moco: moco.py, or simclr.py method=moco)"),
    # every method with a queue, in name order (the registry's; the list grows with it)
    ("simclr.py", "method.queue_size=4096", "method.queue_size is not a key of the chosen method. "
                                            "Fix: method.queue_size belongs to " + ", ".join(
                                                f"method={m}" for m in sorted(
                                                    n for n, c in METHODS.items()
                                                    if "queue_size" in c.Config.__dataclass_fields__))
                                            + ": choose one of them"),
    ("simclr.py", "method=byol loss.gamma=0.5", "loss.gamma is not a key of the chosen method. "
                                               "Fix: loss.gamma belongs to method=sogclr"),
    ("simclr.py", "dataset.root=~/data", "dataset.root=~/data: an unquoted ~ is not expanded here"),
])
def test_hints_lead_somewhere(tmp_path, script, override, expected):
    proc = run(script, *override.split(), f"hydra.run.dir={tmp_path}/run", check=False)
    assert _user_error(proc).startswith(f"error: {expected}")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_text_file_as_pretrained_is_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    proc = run("linear_eval.py", f"pretrained={notes}", "backbone.width=8", "dataset=spirograph",
               f"hydra.run.dir={tmp_path}/run", check=False)
    assert _user_error(proc) == (f"error: {notes} is not a PyTorch checkpoint (it starts with "
                                 f"b'not '). Fix: pretrained= a checkpoint file (.pt, .pth, "
                                 f".pth.tar) or a run directory")
