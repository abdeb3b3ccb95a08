"""Composition of every option of every config group, through Hydra itself."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from sslcifar.config import register_configs
from sslcifar.validate import validate_config

from .conftest import REPO

CONF = REPO / "conf"
register_configs()


def options(group: str):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(primary="simclr", overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=primary, overrides=list(overrides))


def test_simclr_defaults_match_the_simclr_cifar10_recipe():
    cfg = compose_cfg(overrides=["backbone=resnet18"])
    assert cfg.batch_size == 512 and cfg.loss.name == "nt_xent" and cfg.loss.temperature == 0.5
    o = cfg.optimizer
    assert (o.name, o.lr, o.lr_scaling, o.momentum, o.nesterov, o.weight_decay) == \
        ("sgd", 0.3, "linear", 0.9, True, 1e-6)
    assert cfg.scheduler.name == "cosine" and cfg.scheduler.final_lr == 1e-3
    assert (cfg.method.proj_hidden_dim, cfg.method.proj_out_dim) == (2048, 128)
    assert cfg.dataset.name == "cifar10" and cfg.dataset.pipeline == "auto"
    assert OmegaConf.is_struct(cfg)


def moco_cfg(args):
    """Compose as moco.py does: the original names renamed first (cli.rename_aliases)."""
    from sslcifar.cli import rename_aliases
    from sslcifar.config import MOCO_ALIASES
    argv = ["moco.py", *args]
    rename_aliases(MOCO_ALIASES, argv)
    return compose_cfg("moco", argv[1:])


def test_moco_original_command_names_feed_the_method():
    cfg = moco_cfg(["backbone=resnet18", "batch_size=256", "moco_k=4096", "moco_t=0.2"])
    assert cfg.method.name == "moco" and cfg.loss.name == "moco_infonce"
    assert cfg.method.queue_size == 4096 and cfg.loss.temperature == 0.2
    assert cfg.method.momentum == 0.99 and cfg.batch_size == 256
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.06, 5e-4)
    assert cfg.augment.crop_scale == [0.2, 1.0]
    cfg = moco_cfg(["moco_k=1000", "moco_t=0.1", "moco_m=0.9"])
    assert (cfg.method.queue_size, cfg.loss.temperature, cfg.method.momentum) == (1000, 0.1, 0.9)


@pytest.mark.parametrize("group", ["method", "backbone", "loss", "optimizer", "scheduler",
                                   "dataset", "augment", "experiment"])
def test_every_option_of_every_group_composes(group):
    names = options(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        overrides = [f"{group}={name}"]
        if group == "dataset" and name == "imagefolder":
            overrides.append("dataset.root=/somewhere")
        cfg = compose_cfg(overrides=overrides)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("method", options("method"))
def test_each_method_selects_its_loss_and_validates(method):
    cfg = compose_cfg(overrides=[f"method={method}"])
    validate_config(cfg)      # the method's YAML picked the loss that goes with it


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_validate(experiment):
    validate_config(compose_cfg(overrides=[f"experiment={experiment}"]))


def test_misspelt_key_fails_at_composition_naming_it():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(overrides=["loss.temprature=0.1"])
    assert "temprature" in str(e.value) or "temprature" in str(e.value.__cause__)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(overrides=["batch_size=big"])
    assert isinstance(e.value.__cause__, ValidationError)


def test_unknown_group_option_fails():
    with pytest.raises(Exception) as e:
        compose_cfg(overrides=["backbone=resnet1000"])
    assert "resnet1000" in str(e.value)


def test_struct_mode_rejects_new_keys_in_code():
    cfg = compose_cfg()
    with pytest.raises(ConfigAttributeError):
        cfg.optimizer.not_a_key = 1


def test_supcontrast_cross_entropy_preset_augments_like_main_ce():
    """SupContrast's main_ce.py: RandomResizedCrop(scale=(0.2, 1)) and flip, nothing else;
    its SupCon rows add colour jitter (p=0.8) and grayscale (p=0.2)."""
    ce = compose_cfg(overrides=["experiment=supcon_cifar10_ce"])
    assert (ce.method.name, ce.batch_size, ce.optimizer.lr) == ("supervised", 1024, 0.8)
    assert list(ce.augment.crop_scale) == [0.2, 1.0] and ce.augment.flip_p == 0.5
    assert ce.augment.jitter_p == ce.augment.grayscale_p == ce.augment.blur_p == 0
    supcon = compose_cfg(overrides=["experiment=supcon_cifar10"])
    assert (supcon.augment.jitter_p, supcon.augment.grayscale_p) == (0.8, 0.2)


def test_moco_cifar10_demo_preset_is_the_demo_recipe():
    """facebookresearch/moco colab/moco_cifar10_demo.ipynb: batch 512, lr 0.06, wd 5e-4,
    K 4096, m 0.99, T 0.1, bn_splits 8, a linear head to 128, crop 0.08-1, no blur."""
    from sslcifar.optim import scaled_lr
    for primary in ("simclr", "moco"):
        cfg = compose_cfg(primary, overrides=["experiment=moco_cifar10_demo"])
        assert (cfg.method.name, cfg.loss.name, cfg.batch_size) == ("moco", "moco_infonce", 512)
        assert scaled_lr(cfg.optimizer.lr, cfg.batch_size, cfg.optimizer.lr_scaling) == 0.06
        assert (cfg.method.queue_size, cfg.method.momentum, cfg.loss.temperature) == (4096, 0.99, 0.1)
        assert (cfg.method.bn_splits, cfg.method.proj_layers, cfg.method.proj_out_dim) == (8, 1, 128)
        assert (cfg.optimizer.weight_decay, cfg.optimizer.nesterov) == (5e-4, False)
        assert list(cfg.augment.crop_scale) == [0.08, 1.0] and cfg.augment.blur_p == 0
        assert (cfg.eval.knn_k, cfg.eval.knn_temperature) == (200, 0.1)
        validate_config(cfg)


def _preset_targets(name):
    """The entrypoints a preset is written for: its `python <script>.py experiment=<name>` lines."""
    import re
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    return sorted(set(re.findall(rf"(simclr|moco)\.py experiment={name}\b", text)))


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("name", options("experiment"))
def test_presets_list_only_their_differences(name):
    """Every value a preset sets differs from what its entrypoint(s) compose without it (with
    the preset's own group choices): a preset that repeats defaults hides what it changes."""
    import yaml
    targets = _preset_targets(name)
    assert targets, f"experiment/{name}.yaml names no `simclr.py experiment={name}` line"
    spec = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    # a preset replaces the default one (simclr.py's SimCLR-CIFAR10): compare with none, or
    # with its parent
    groups = [f"experiment={d}" if isinstance(d, str) else             # a parent preset
              f"{k.removeprefix('override /')}={v}"
              for d in spec.get("defaults", []) for k, v in ([(None, None)] if isinstance(d, str)
                                                              else d.items())]
    if not any(g.startswith("experiment=") for g in groups):
        groups = ["~experiment", *groups]
    values = dict(_leaves({k: v for k, v in spec.items() if k != "defaults"}))
    assert values or groups, f"experiment/{name} changes nothing"
    for key, value in values.items():
        differs = []
        for primary in targets:
            base = OmegaConf.to_container(compose_cfg(primary, groups), resolve=True)
            for part in key.split("."):
                base = base[part]
            differs.append(base != value and not (isinstance(value, list) and base == value))
        assert any(differs), f"experiment/{name} sets {key}={value}, the default of {targets}"


def test_a_method_yaml_and_loss_yaml_for_every_registered_method():
    from sslcifar.methods import METHODS
    assert set(options("method")) == set(METHODS)
    for name, cls in METHODS.items():
        cfg = compose_cfg(overrides=[f"method={name}"])
        assert cfg.method.name == name and cfg.loss.name == cls.loss_name
        assert OmegaConf.get_type(cfg.method) is cls.Config
        assert OmegaConf.get_type(cfg.loss) is cls.Loss
        assert (CONF / "loss" / f"{cls.loss_name}.yaml").exists()


def test_a_methods_options_are_its_own():
    """Fields of one method are not keys of another (a flat schema would accept them)."""
    with pytest.raises(ConfigCompositionException):
        compose_cfg(overrides=["method=simclr", "method.queue_size=10"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(overrides=["method=moco", "loss.gamma=0.5"])
    assert compose_cfg(overrides=["method=sogclr", "loss.gamma=0.5"]).loss.gamma == 0.5


@pytest.mark.parametrize("preset", ["moco_v2_cifar10", "moco_cifar10_demo"])
def test_the_original_moco_names_win_over_a_preset(preset):
    """`python moco.py experiment=moco_v2_cifar10 moco_k=8192` trains with K = 8192, through
    the real entrypoint (all three names in one composition)."""
    import yaml
    from .conftest import run
    aliases = {"moco_k": ("method.queue_size", 8192), "moco_t": ("loss.temperature", 0.05),
               "moco_m": ("method.momentum", 0.5)}
    proc = run("moco.py", f"experiment={preset}",
               *(f"{a}={v}" for a, (_, v) in aliases.items()), "--cfg", "job")
    cfg = yaml.safe_load(proc.stdout)
    for alias, (key, value) in aliases.items():
        group, field = key.split(".")
        assert cfg[group][field] == value, (preset, alias, cfg[group])
