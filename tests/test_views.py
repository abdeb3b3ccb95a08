"""View groups: the augment config resolved into views of any number and size, made in
one pass per group by the real ViewMaker, with their parameters."""
import pytest
import torch

from sslcifar.data.augment import ViewMaker
from sslcifar.data.views import view_sizes, view_specs
from sslcifar.errors import UserError

from .test_config import compose_cfg


def specs(*overrides):
    cfg = compose_cfg(overrides=list(overrides))
    return view_specs(cfg.augment, cfg.dataset)


def test_default_is_one_group_of_two_views_at_the_dataset_size_with_the_base_fields():
    (s,) = specs()
    assert (s.count, s.size, s.crop_scale, s.jitter_p, s.hue) == (2, 32, (0.08, 1.0), 0.8, 0.1)
    (s,) = specs("dataset=stl10", "augment=stl10")
    assert (s.count, s.size, s.blur_p, s.blur_kernel_size) == (2, 96, 0.5, 9)


def test_small_crops_shortcut_appends_a_group_after_the_global_views():
    glob, small = specs("augment.small_crops=6", "augment.small_size=24")
    assert (glob.count, glob.size, glob.crop_scale) == (2, 32, (0.08, 1.0))
    assert (small.count, small.size, small.crop_scale) == (6, 24, (0.05, 0.14))
    assert small.jitter_p == glob.jitter_p                       # the rest is inherited
    # the data set's own small size when none is given (CIFAR 24, STL-10 58)
    assert specs("augment.small_crops=2")[1].size == 24
    assert specs("dataset=stl10", "augment.small_crops=2")[1].size == 58
    assert view_sizes(specs("augment.small_crops=2")) == [32, 32, 24, 24]


def test_a_group_overrides_fields_for_its_views_only():
    a, b = specs("augment.groups=[{count:1,blur_p:1.0},{count:1,blur_p:0.1,solarize_p:0.2}]")
    assert (a.count, a.blur_p, a.solarize_p) == (1, 1.0, 0.0)
    assert (b.count, b.blur_p, b.solarize_p) == (1, 0.1, 0.2)
    assert a.crop_scale == b.crop_scale == (0.08, 1.0)
    (three,) = specs("augment.groups.0.count=3")
    assert three.count == 3


def test_small_crops_without_a_size_is_one_clear_error():
    with pytest.raises(UserError, match="augment.small_crops=4 needs the size of the small crops"):
        specs("dataset=imagefolder", "dataset.root=/x", "augment.small_crops=4")


def test_view_maker_makes_every_size_with_parameters_in_group_order():
    torch.manual_seed(0)
    x = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8)
    maker = ViewMaker(specs("augment.small_crops=3", "augment.small_size=16"), [0.5] * 3, [0.5] * 3)
    views, params = maker.make(x, torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    # small crops cover at most 14% of the image (their sampled boxes say so)
    small_area = params[2]["box"][:, 2] * params[2]["box"][:, 3] / 32 ** 2
    assert (small_area <= 0.14 + 0.05).all()
    again, _ = maker.make(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
