"""Every default in one place, every range declared once: the schemas hold types and ranges
(sslcifar.ranges.declared), the YAML tree the values, and one generic check refuses a value
out of range with one line before anything is written."""
import dataclasses
import inspect

import pytest
import yaml
from omegaconf import MISSING

from sslcifar import losses
from sslcifar.config import TrainConfig, ViewGroupConfig
from sslcifar.errors import UserError
from sslcifar.eval_config import KnnEvalConfig, LinearEvalConfig, TsneConfig
from sslcifar.methods import METHODS
from sslcifar.ranges import Interval, check_ranges, check_value, declared

from .conftest import TINY, run
from .test_config import CONF, compose_cfg


# ---------------------------------------------------------------------- the check itself

@pytest.mark.parametrize("text, inside, outside", [
    ("[0, 1]", [0, 0.5, 1], [-0.1, 1.01, float("nan"), True]),
    ("(0, inf)", [1e-9, 7], [0, -1]),
    ("[1, inf)", [1, 10**6], [0, 0.999]),
    ("[0, 1)", [0, 0.999], [1]),
    ("(0, 1]", [1, 0.5], [0]),
])
def test_intervals_include_and_exclude_their_bounds_as_written(text, inside, outside):
    interval = Interval.parse(text)
    assert all(v in interval for v in inside) and not any(v in interval for v in outside)


def test_each_kind_of_declaration_names_the_key_the_value_and_what_is_allowed():
    def msg(value, **allowed):
        meta = dataclasses.field(**{"metadata": declared(**allowed).metadata}).metadata["allowed"]
        with pytest.raises(UserError) as e:
            check_value("a.key", value, meta)
        return str(e.value)
    assert msg(1.5, interval="[0, 1]") == "a.key=1.5 is not allowed: needs a value in [0, 1]"
    assert msg(0, interval="(0, inf)") == "a.key=0 is not allowed: needs > 0"
    assert msg(-1, interval="[0, inf)") == "a.key=-1 is not allowed: needs >= 0"
    assert msg([0.5, 0.1], interval="(0, 1]", pair=True) == \
        "a.key=[0.5,0.1] is not allowed: needs low <= high"
    assert msg([0.5], interval="(0, 1]", pair=True) == \
        "a.key=[0.5] is not allowed: needs 2 values (low, high)"
    assert msg([1, 0, 1], interval="(0, inf)", length=3) == \
        "a.key=[1,0,1] is not allowed: needs each value > 0"
    assert msg("gpu", choices=("cpu", "cuda")) == "a.key=gpu is not allowed: use one of cpu, cuda"
    check_value("a.key", None, declared("[1, inf)").metadata["allowed"])     # null: allowed


@pytest.mark.parametrize("override, line", [
    ("augment.jitter_p=1.5", "augment.jitter_p=1.5 is not allowed: needs a value in [0, 1]"),
    ("augment.grayscale_p=-0.2", "augment.grayscale_p=-0.2 is not allowed: needs a value in [0, 1]"),
    ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs=-1.0 is not allowed: needs >= 0"),
    ("augment.groups.0.blur_p=2", "augment.groups.0.blur_p=2.0 is not allowed: needs a value in [0, 1]"),
    ("augment.small_crop_scale=[0.3,0.1]", "augment.small_crop_scale=[0.3,0.1] is not allowed: needs low <= high"),
    ("dataset.std=[0.2,0,0.2]", "dataset.std=[0.2,0.0,0.2] is not allowed: needs each value > 0"),
    ("device=gpu", "device=gpu is not allowed: use one of auto, cpu, cuda"),
    ("method=byol method.base_momentum=1.2", "method.base_momentum=1.2 is not allowed: needs a value in [0, 1]"),
])
def test_an_out_of_range_value_ends_in_one_line_exit_2_and_nothing_written(tmp_path, override, line):
    proc = run("simclr.py", *override.split(), f"hydra.run.dir={tmp_path}/run", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {line}"
    assert not (tmp_path / "run").exists()


def test_the_evaluation_commands_check_their_ranges_too(tmp_path):
    for command, override, line in (
            ("linear_eval.py", "momentum=1.5", "momentum=1.5 is not allowed: needs a value in [0, 1]"),
            ("-m sslcifar.knn", "k=0", "k=0 is not allowed: needs >= 1"),
            ("-m sslcifar.figures tsne", "num_points=2", "num_points=2 is not allowed: needs >= 4")):
        proc = run(command, override, f"hydra.run.dir={tmp_path}/run", check=False) \
            if not command.endswith("tsne") else \
            run("-m sslcifar.figures", "tsne", override, f"hydra.run.dir={tmp_path}/run", check=False)
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: {line}", proc.stderr
        assert not (tmp_path / "run").exists()


def test_a_multirun_job_out_of_range_is_refused_before_it_trains(tmp_path):
    """-m skips the early composition; each job checks again (train -> validate_config)."""
    from sslcifar.train import train
    cfg = compose_cfg(overrides=[*TINY, "experiment=demo", "augment.flip_p=3", f"run_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"augment.flip_p=3.0 is not allowed"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_every_composed_preset_and_method_is_within_its_ranges():
    for name in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        check_ranges(compose_cfg(overrides=[f"experiment={name}"]))
    for name in METHODS:
        check_ranges(compose_cfg(overrides=[f"method={name}"]))


# ---------------------------------------------------------------------- each default in one place

def _schemas():
    """Every dataclass schema: the training tree, the evaluation commands', each method's."""
    seen, todo = [], [TrainConfig, LinearEvalConfig, KnnEvalConfig, TsneConfig,
                      *(c for m in METHODS.values() for c in (m.Config, m.Loss))]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                todo.append(f.default_factory)
    return seen


def test_schemas_hold_types_and_ranges_and_no_values():
    """A value in a schema would be a second place for a default (the YAML tree is the
    first). The exceptions are what a field means, not a recipe: a view group's null
    (inherit the base augmentation) and its count 1."""
    for cls in _schemas():
        for f in dataclasses.fields(cls):
            if cls is ViewGroupConfig:
                continue
            if f.default_factory is not dataclasses.MISSING:
                assert dataclasses.is_dataclass(f.default_factory), f"{cls.__name__}.{f.name}"
                continue
            assert f.default is MISSING, f"{cls.__name__}.{f.name} = {f.default!r}: move it to conf/"


def _yaml(path):
    return yaml.safe_load((CONF / path).read_text())


# each loss function (or class) that keeps its paper's defaults for library users, and the
# YAML file whose values they must equal (parameter name -> YAML key where they differ)
LOSS_DEFAULTS = {
    losses.nt_xent: ("loss/nt_xent", {}), losses.nt_xent_multi: ("loss/nt_xent", {}),
    losses.supcon: ("loss/supcon", {}), losses.mocov3_infonce: ("loss/mocov3_infonce", {}),
    losses.DINOLoss: ("loss/dino", {}),
    losses.sinkhorn: ("loss/swav", {"iterations": "sinkhorn_iterations"}),
    losses.swav_loss: ("loss/swav", {"iterations": "sinkhorn_iterations"}),
    losses.barlow_twins: ("loss/barlow_twins", {}), losses.vicreg: ("loss/vicreg", {}),
    losses.SogCLRLoss: ("loss/sogclr", {}), losses.nnclr_loss: ("loss/nnclr", {}),
    losses.ressl_loss: ("loss/ressl", {}),
    losses.wmse_loss: ("loss/wmse", {}), losses.whiten_cholesky: ("loss/wmse", {}),
    losses.vibcreg_loss: ("loss/vibcreg", {}),
    losses.deepclusterv2_loss: ("loss/deepclusterv2", {}),
    losses.spherical_kmeans: ("loss/deepclusterv2", {"iterations": "kmeans_iterations"}),
    losses.gradient_penalty: ("method/invclr", {"upper_limit": "gp_upper_limit",
                                                "normalize": "gp_normalize"}),
    losses.dcl_loss: ("loss/dcl", {}), losses.tico_loss: ("loss/tico", {}),
    losses.mmcr_loss: ("loss/mmcr", {}), losses.smog_loss: ("loss/smog", {}),
    losses.sigreg_loss: ("loss/lejepa", {}), losses.lejepa_loss: ("loss/lejepa", {}),
    losses.total_coding_rate: ("loss/emp_ssl", {}), losses.emp_ssl_loss: ("loss/emp_ssl", {}),
    losses.densecl_loss: ("loss/densecl", {}), losses.vicregl_loss: ("loss/vicregl", {}),
    losses.mae_loss: ("loss/mae", {}),
}


def test_the_defaults_a_loss_function_keeps_equal_the_yaml():
    for fn, (name, renamed) in LOSS_DEFAULTS.items():
        values = _yaml(f"{name}.yaml")
        checked = 0
        for p in inspect.signature(fn).parameters.values():
            key = renamed.get(p.name, p.name)
            if p.default is not inspect.Parameter.empty and key in values:
                default = list(p.default) if isinstance(p.default, tuple) else p.default
                assert default == values[key], f"{fn.__name__}({p.name}={p.default}) vs {name}.yaml {values[key]}"
                checked += 1
        assert checked, f"{fn.__name__}: no default to compare with {name}.yaml"


def test_every_loss_with_defaults_is_in_that_table():
    for name in losses.__all__:
        fn = getattr(losses, name)
        params = inspect.signature(fn).parameters.values()
        if any(p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float))
               and not isinstance(p.default, bool) for p in params):
            assert fn in LOSS_DEFAULTS, f"losses.{name} keeps numeric defaults: add it to LOSS_DEFAULTS"


def test_values_shared_by_two_commands_are_equal():
    """The kNN monitor of training and `python -m sslcifar.knn`; the t-SNE of training and
    `python -m sslcifar.figures tsne` (its function's defaults too); LARS's defaults and
    the optimizer files."""
    from sslcifar.figures import tsne_png
    from sslcifar.optim import LARS
    train, knn, tsne = _yaml("common/train.yaml"), _yaml("knn.yaml"), _yaml("tsne.yaml")
    assert (train["eval"]["knn_k"], train["eval"]["knn_temperature"]) == (knn["k"], knn["temperature"])
    assert train["eval"]["tsne_points"] == tsne["num_points"]
    sig = inspect.signature(tsne_png).parameters
    assert (sig["perplexity"].default, sig["iterations"].default) == (tsne["perplexity"], tsne["iterations"])
    lars, common = _yaml("optimizer/lars.yaml"), _yaml("common/optimizer.yaml")
    sig = inspect.signature(LARS).parameters
    assert sig["momentum"].default == common["momentum"]
    assert sig["trust_coefficient"].default == common["trust_coefficient"]
    assert sig["variant"].default == common["lars_variant"] and lars["name"] == "lars"
