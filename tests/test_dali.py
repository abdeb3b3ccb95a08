"""dataset.pipeline=dali on a CPU (DALI's CPU decoder and resize; `mixed` on a GPU): views
against the stream pipeline's views of the same boxes, odd files, evaluation's centre crops,
training through simclr.py with a bit-identical resume, and the missing-DALI line."""
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from sslcifar.data.augment import ViewSpec
from sslcifar.data.order import mix_seed
from sslcifar.data.sources import build_source
from sslcifar.data.stream import _Bytes, _collate_bytes, decode_views

from .conftest import REPO, TINY, run
from .test_stream import _cfg, jpeg_folder, train_and_resume  # noqa: F401  (the folder fixture)

pytest.importorskip("nvidia.dali", reason="the [dali] extra (in [test]) is not installed")


def _dali_views(paths, specs, items):
    from sslcifar.data.dali import DaliViews
    loader = DataLoader(_Bytes(paths, specs), batch_sampler=[items], num_workers=2,
                        collate_fn=_collate_bytes)
    packed, boxes, flips, index, bad = next(iter(loader))
    expanded = [s for s in specs for _ in range(s.count)]
    dali = DaliViews(len(items), torch.device("cpu"))
    views, unreadable = dali(packed, boxes, flips, expanded, "cpu")
    return packed, boxes, flips, bad, views, unreadable, dali.fallbacks


def test_each_dali_view_is_the_stream_pipelines_view_of_the_same_box(jpeg_folder, tmp_path):  # noqa: F811
    """DALI decodes only the box, resizes (antialiased linear) and flips: against the stream
    pipeline's decode_views of the same box (full decode, torch's antialiased uint8
    bilinear), 160 px views of 320 x 240 files: seen 0.15 grey levels apart on average and 1
    at most (bound: 0.5 and 3; a box shifted by one pixel differs by several). The truncated
    JPEG and the text file are named and replaced in the workers; a PNG named .jpg, a CMYK
    and a grayscale JPEG are read by DALI itself (no batch falls back)."""
    from PIL import Image
    base = Image.open(jpeg_folder / "train" / "class4" / "0.jpg")
    base.save(tmp_path / "png.jpg", format="PNG")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    base.convert("L").save(tmp_path / "gray.jpg", quality=90)
    paths = sorted(jpeg_folder.glob("train/*/*.jpg")) + sorted(tmp_path.glob("*.jpg"))
    specs = [ViewSpec(size=160), ViewSpec(size=64, count=2)]
    items = [(i, 11 + i) for i in range(len(paths))]
    packed, boxes, flips, bad, views, unreadable, fallbacks = _dali_views(paths, specs, items)
    assert fallbacks == 0                       # DALI made every view
    assert [tuple(v.shape) for v in views] == [(len(paths), 3, 160, 160)] + [(len(paths), 3, 64, 64)] * 2
    named = sorted(os.path.basename(b.split(":")[0]) for b in bad if b)
    assert named == ["notes.jpg", "truncated.jpg"] and unreadable == []
    expanded = [specs[0], specs[1], specs[1]]
    diffs = []
    for k, (name, (_, seed)) in enumerate(zip(packed[2], items)):
        ref, b, f = decode_views(name, expanded, [mix_seed(seed, v) for v in range(3)])
        assert torch.equal(b, boxes[k]) and torch.equal(f, flips[k])
        diffs += [(v[k].int() - r.int()).abs().float() for v, r in zip(views, ref) if r.shape[-1] == 160]
    d = torch.stack(diffs)
    assert d.mean() < 0.5 and d.max() <= 3, (d.mean(), d.max())


def test_evaluation_reads_dali_centre_crops_as_the_stream_pipeline(jpeg_folder):  # noqa: F811
    stream = build_source(_cfg(jpeg_folder, "dataset.pipeline=stream", "dataset.size=64"), "test",
                          torch.device("cpu"))
    dali = build_source(_cfg(jpeg_folder, "dataset.pipeline=dali", "dataset.size=64"), "test",
                        torch.device("cpu"))
    index = torch.arange(len(stream))
    a = torch.cat(list(stream.plain_batches(index, 8)))
    b = torch.cat(list(dali.plain_batches(index, 8)))
    assert a.shape == b.shape == (20, 3, 64, 64) and dali.fallbacks == 0
    # normalised by 0.5: a grey level is 0.008. Pillow's decode + bilinear against DALI's
    # decode + antialiased linear, with the same resized size and crop (plain_geometry):
    # seen 0.0028 on average (0.35 grey levels) and 0.039 at most (5); one pixel's shift of
    # the crop gave 0.073 on average
    diff = (a - b).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.08, (diff.mean(), diff.max())


@pytest.mark.slow
def test_training_through_dali_resumes_bit_identically(tmp_path, jpeg_folder):  # noqa: F811
    full = train_and_resume(tmp_path, jpeg_folder, "dali")
    assert json.loads((full / "done.json").read_text())["knn_top1"] >= 0


def test_dali_workers_start_after_an_evaluation_through_dali(tmp_path, jpeg_folder):  # noqa: F811
    """kNN after each epoch reads through DALI's evaluation pipeline in the main process (its
    threads started); the next epoch's workers are forked after it and each builds a DALI
    pipeline of its own for the training views."""
    proc = run("simclr.py", *TINY, "dataset=imagefolder", f"dataset.root={jpeg_folder}",
               "dataset.size=32", "dataset.pipeline=dali", "dataset.num_workers=2", "epochs=2",
               "eval.knn_every=1", f"hydra.run.dir={tmp_path / 'run'}")
    out = proc.stdout + proc.stderr
    assert "epoch 1 step" in out and out.count("knn_top1=") >= 3, out[-3000:]
    assert "DALI refused a batch" not in out       # (the fixture's bad test files: evaluation's)


def test_without_dali_the_run_says_how_to_install_it(tmp_path, jpeg_folder):  # noqa: F811
    """Without DALI (an empty package `nvidia` first on the path hides the installed one:
    `import nvidia.dali` fails as where it is not installed) the run ends in one line
    naming the extra."""
    shadow = tmp_path / "shadow" / "nvidia"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{REPO}"}
    proc = run("simclr.py", *TINY, "dataset=imagefolder", f"dataset.root={jpeg_folder}",
               "dataset.pipeline=dali", f"hydra.run.dir={tmp_path / 'run'}", env=env, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "pip install -e '.[dali]'" in last, proc.stderr


def test_the_gpu_pipelines_are_well_formed():
    """The GPU placement (mixed decode, gpu resize, flip and slice) is defined without a GPU
    (building it needs one): DALI's own checks of where each input lives (argument inputs
    must stay on the CPU) run at definition."""
    from sslcifar.data.dali import plain_pipeline, views_pipeline
    cuda = torch.device("cuda", 0)
    views_pipeline([ViewSpec(size=32), ViewSpec(size=16, interpolation="bicubic")], 8, 2, cuda)
    plain_pipeline(64, 8, 2, cuda)
