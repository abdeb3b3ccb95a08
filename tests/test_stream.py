"""The streaming pipeline on a folder of real JPEG files of a few hundred pixels (CIFAR-10
images of the shared archive, upscaled to 320 x 240), with a truncated JPEG and a text file
named .jpg among them."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sslcifar.data.datasets import load_cifar
from sslcifar.data.sources import build_source
from sslcifar.data.stream import StreamBatches, StreamSource

from .conftest import TINY, run
from .test_config import compose_cfg

W, H = 320, 240


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory, cifar_root):
    """root/{train,test}/<class>/*.jpg: 6 train and 2 test images per class (60 + 20)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("jpegs")
    data = load_cifar("cifar10", str(cifar_root), "train", download=False)
    for split, per, offset in (("train", 6, 0), ("test", 2, 6)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            idx = (data.labels == c).nonzero().squeeze(1)[offset:offset + per]
            for k, i in enumerate(idx.tolist()):
                img = Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).resize((W, H), Image.BICUBIC)
                img.save(folder / f"{k}.jpg", quality=90)
    good = (root / "train" / "class0" / "0.jpg").read_bytes()
    (root / "train" / "class0" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "train" / "class1" / "notes.jpg").write_text("not an image")
    return root


def _cfg(root, *extra):
    return compose_cfg(overrides=["dataset=imagefolder", f"dataset.root={root}", "dataset.size=64",
                                  "dataset.num_workers=0", *extra])


def test_auto_streams_when_the_decoded_set_is_over_budget(jpeg_folder, caplog):
    with caplog.at_level(logging.INFO):
        src = build_source(_cfg(jpeg_folder, "dataset.memory_budget_mb=0"), "train",
                           torch.device("cpu"), augment=True)
    assert isinstance(src, StreamSource) and len(src) == 62          # the bad files are listed
    assert "streaming" in caplog.text and "memory budget" in caplog.text
    in_memory = build_source(_cfg(jpeg_folder, "dataset.memory_budget_mb=1000"), "train",
                             torch.device("cpu"), augment=True)
    assert not isinstance(in_memory, StreamSource)
    assert len(in_memory) == 60                                       # decoded: the 2 bad ones left out


def _batches(root, *extra, rank=0, world=1, workers=0):
    cfg = _cfg(root, "dataset.pipeline=stream", "augment.small_crops=2", "augment.small_size=24",
               "batch_size=16", *extra)
    src = build_source(cfg, "train", torch.device("cpu"), augment=True)
    return StreamBatches(src, 16, seed=3, rank=rank, world=world, num_workers=workers,
                         device=torch.device("cpu"))


def test_views_are_cropped_from_the_full_image_at_each_groups_size(jpeg_folder):
    batches = list(_batches(jpeg_folder).epoch(0))
    assert len(batches) == 3                                         # 62 images // 16
    b = batches[0]
    assert [tuple(v.shape) for v in b.views] == [(16, 3, 64, 64)] * 2 + [(16, 3, 24, 24)] * 2
    boxes = torch.cat([p["box"] for bt in batches for p in bt.params])
    # the old in-memory copy was the centre 240 x 240 square: crops reach outside it
    left, width = boxes[:, 1], boxes[:, 3]
    assert ((left < (W - H) // 2) | (left + width > (W + H) // 2)).any()
    assert (boxes[:, 0] + boxes[:, 2] <= H).all() and (left + width <= W).all()
    assert {"jitter", "order", "gray", "box", "flip"} <= set(b.params[0])
    # a replayed view is the view (the crop stays, the colour is re-made)
    torch.testing.assert_close(b.replay(1, b.params[1]), b.views[1])
    # every item of the folder, the truncated JPEG and the text file too: no crash, the bad
    # ones replaced by the next readable image and named by path
    dataset = _batches(jpeg_folder).dataset
    bad = [dataset[(i, 0)][4] for i in range(len(dataset))]
    named = [b for b in bad if b]
    assert len(named) == 2 and any("truncated.jpg" in b for b in named) and \
        any("notes.jpg" in b for b in named)


def test_each_view_is_its_box_of_the_file_resized_as_pillow_resizes_it(jpeg_folder):
    """decode_views against Pillow, view by view: the drawn box of the full-resolution
    file, resized with antialiasing (torch's uint8 kernel rounds within 2 of Pillow's; seen:
    0.2% of the values differ), flipped where drawn. A 160 px view of a 320 x 240 file is
    never decoded at reduced scale; 24 px views of large boxes are (JPEG draft mode, the box
    rounded to the reduced image's pixels): seen 2.1 grey levels from Pillow's resize of the
    full decode on average, 24 at most; a box off by one reduced pixel: 4.6 on average."""
    from PIL import Image
    from sslcifar.data.augment import ViewSpec
    from sslcifar.data.stream import decode_views
    cases = {"full": [ViewSpec(size=160)], "draft": [ViewSpec(size=24, crop_scale=(0.3, 1.0))]}
    for name, specs in cases.items():
        flips, diffs = 0, []
        for k, path in enumerate(sorted(jpeg_folder.glob("train/class2/*.jpg"))):
            views, boxes, flip = decode_views(path, specs, [k])
            (t, l, h, w), = boxes.tolist()
            ref = Image.open(path).convert("RGB").resize((specs[0].size,) * 2, Image.BILINEAR,
                                                         box=(l, t, l + w, t + h))
            ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
            ref = ref.flip(-1) if flip[0] else ref
            flips += bool(flip[0])
            diffs.append((views[0].int() - ref.int()).abs().float())
        d = torch.stack(diffs)
        if name == "full":
            assert d.max() <= 2 and (d > 0).float().mean() < 0.01 and 0 < flips < 6
        else:
            assert d.mean() < 3 and d.max() < 48


def test_resume_at_any_step_with_any_number_of_workers_and_rank_shards(jpeg_folder):
    whole = list(_batches(jpeg_folder, workers=0).epoch(1))
    later = list(_batches(jpeg_folder, workers=2).epoch(1, start_step=1))
    for a, b in zip(whole[1:], later):
        assert torch.equal(a.index, b.index)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    r0 = list(_batches(jpeg_folder, rank=0, world=2).epoch(1))
    r1 = list(_batches(jpeg_folder, rank=1, world=2).epoch(1))
    for w, a, b in zip(whole, r0, r1):
        assert torch.equal(torch.cat([a.index, b.index]), w.index)    # disjoint halves, the batch
        assert not set(a.index.tolist()) & set(b.index.tolist())


def test_evaluation_streams_the_resized_centre_crops(jpeg_folder):
    cfg = _cfg(jpeg_folder, "dataset.pipeline=stream", "dataset.size=32")
    src = build_source(cfg, "test", torch.device("cpu"))
    index = torch.arange(len(src))
    streamed = torch.cat(list(src.plain_batches(index, 8)))
    assert streamed.shape == (20, 3, 32, 32)
    torch.testing.assert_close(streamed, src.plain(index))
    # shorter side 240 -> 32, centre crop: the same as the in-memory copy's pixels
    memory = build_source(_cfg(jpeg_folder, "dataset.pipeline=device", "dataset.size=32"), "test",
                          torch.device("cpu"))
    # two resampling implementations of the same JPEG (draft-mode decode + Pillow's resize
    # against the decoded copy's): a few grey levels apart per pixel (max 0.04 on CIFAR
    # pixels, 0.08 on the fixture's synthetic noise, mean 0.004 / 0.014); a crop shifted by
    # one output pixel differs by 0.074 on average on CIFAR pixels
    diff = (streamed - memory.plain(index)).abs()
    assert diff.max() < 0.12 and diff.mean() < 0.025


def train_and_resume(tmp_path, jpeg_folder, pipeline: str) -> Path:
    """simclr.py on the folder with `pipeline`, 2 workers, 2 epochs; again stopped after 4
    steps and resumed with no workers: the same weights bit for bit, the bad files named.
    Returns the uninterrupted run's directory."""
    common = [*TINY, "dataset=imagefolder", f"dataset.root={jpeg_folder}", "dataset.size=32",
              f"dataset.pipeline={pipeline}", "dataset.num_workers=2", "epochs=2",
              "eval.knn_every=0"]
    full, split = tmp_path / "full", tmp_path / "split"
    proc = run("simclr.py", *common, f"hydra.run.dir={full}")
    assert "unreadable image skipped" in proc.stderr + proc.stdout
    run("simclr.py", *common, "max_steps=4", f"hydra.run.dir={split}")
    run("simclr.py", *common, "resume=true", "dataset.num_workers=0", f"hydra.run.dir={split}")
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    return full


@pytest.mark.slow
def test_training_streams_end_to_end_and_resumes_bit_identically(tmp_path, jpeg_folder):
    train_and_resume(tmp_path, jpeg_folder, "stream")


@pytest.mark.slow
def test_compiled_colour_ops_equal_the_eager_ones_to_rounding(jpeg_folder, monkeypatch):
    """augment.compile=true on the stream: the colour ops through torch.compile, over
    cache-sized chunks (made 5 images here, so a batch of 16 is cut 5 + 5 + 5 + 1), give
    the eager views to float rounding, and the same parameters."""
    import sslcifar.data.augment as augment
    monkeypatch.setattr(augment, "CPU_CHUNK_BYTES", 5 * 3 * 64 * 64 * 4)
    cfg = _cfg(jpeg_folder, "dataset.pipeline=stream", "batch_size=16", "augment.compile=true")
    src = build_source(cfg, "train", torch.device("cpu"), augment=True)

    def first(compile):
        b = StreamBatches(src, 16, seed=3, rank=0, world=1, num_workers=0,
                          device=torch.device("cpu"), compile=compile)
        return b, next(iter(b.epoch(0)))
    _, eager = first(False)
    batches, compiled = first(True)
    assert not batches.colour.failed
    for a, b in zip(eager.views, compiled.views):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    for p, q in zip(eager.params, compiled.params):
        assert all(torch.equal(p[k], q[k]) for k in p)


def test_decode_rgb_reads_what_pillow_reads_and_names_what_it_cannot(jpeg_folder, tmp_path):
    """The workers' full-size decode (a tensor decoder where one reads the file, else
    Pillow) gives Pillow's pixels: JPEG within the rounding of two libjpeg-turbo builds,
    PNG and BMP (Pillow's own fallback) exactly; a truncated JPEG or a text file raises
    BadImage naming the file."""
    from PIL import Image
    from sslcifar.data.folders import BadImage, decode_rgb
    src = jpeg_folder / "train" / "class3" / "0.jpg"
    pil = Image.open(src).convert("RGB")
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    d = (decode_rgb(src).int() - ref.int()).abs()
    assert d.shape == (3, H, W) and d.max() <= 2 and d.float().mean() < 0.05
    for suffix in (".png", ".bmp"):
        pil.save(tmp_path / f"x{suffix}")
        assert torch.equal(decode_rgb(tmp_path / f"x{suffix}"), ref)
    for bad in (jpeg_folder / "train" / "class0" / "truncated.jpg",
                jpeg_folder / "train" / "class1" / "notes.jpg"):
        with pytest.raises(BadImage, match=bad.name):
            decode_rgb(bad)


_DECODE_CUDA_PIECES = r'''
import json, resource, sys
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from sslcifar.data.augment import ViewSpec
from sslcifar.data.order import mix_seed
from sslcifar.data.stream import _Bytes, _collate_bytes, _gpu_views, decode_views
paths = sorted(Path(p) for p in json.loads(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
specs = [ViewSpec(size=160), ViewSpec(size=96)]
items = [(i % len(paths), 7 + i) for i in range(300)]
loader = DataLoader(_Bytes(paths, specs), batch_sampler=[items], num_workers=2,
                    collate_fn=_collate_bytes, timeout=60)
packed, boxes, flips, index, bad = next(iter(loader))
views, unreadable = _gpu_views(packed, boxes, flips, specs, torch.device("cpu"))
diff = 0
for k, (name, (_, seed)) in enumerate(zip(packed[2], items)):
    ref, b, f = decode_views(Path(name), specs, [mix_seed(seed, v) for v in range(len(specs))])
    assert torch.equal(b, boxes[k]) and torch.equal(f, flips[k])
    diff = max(diff, *((v[k].int() - r.int()).abs().max().item() for v, r in zip(views, ref)))
print(json.dumps({"diff": diff, "bad": sorted({Path(b.split(":")[0]).name for b in bad if b}),
                  "unreadable": unreadable, "shapes": [list(v.shape) for v in views]}))
'''


def test_decode_cuda_batches_cross_a_low_open_file_limit_and_equal_decode_cpu(jpeg_folder, tmp_path):
    """dataset.decode=cuda's pieces on a CPU (libjpeg where a GPU has nvJPEG): batches of 300
    files through 2 real workers under an open-file limit of 128 (one packed buffer per batch:
    a list of 512 buffers hung training on the H200), every view equal to decode=cpu's view
    of the same box (float against uint8 resize kernels: within 2 grey levels); a truncated
    JPEG and a text file named and replaced; a PNG named .jpg, a CMYK and a grayscale JPEG
    read as decode=cpu reads them."""
    import json
    import subprocess
    import sys
    from PIL import Image
    from .conftest import REPO
    base = Image.open(jpeg_folder / "train" / "class4" / "0.jpg")
    base.save(tmp_path / "png.jpg", format="PNG")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    base.convert("L").save(tmp_path / "gray.jpg", quality=90)
    paths = [str(p) for p in sorted(jpeg_folder.glob("train/*/*.jpg")) + sorted(tmp_path.glob("*.jpg"))]
    proc = subprocess.run([sys.executable, "-c", _DECODE_CUDA_PIECES, json.dumps(paths)],
                          capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["shapes"] == [[300, 3, 160, 160], [300, 3, 96, 96]]
    assert got["bad"] == ["notes.jpg", "truncated.jpg"] and got["unreadable"] == []
    assert got["diff"] <= 2, got


def test_colour_ops_in_the_workers_equal_the_main_processs(jpeg_folder):
    """On a CPU with workers the colour ops run in the worker that made the batch
    (_ColourInWorker), with the parameters the main process draws: the same views (to
    float32 rounding: a per-image mean can be summed by more threads in the main process),
    the same parameters, and a replay that re-makes each view."""
    extra = ("dataset.size=112", "augment.blur_p=0.5", "augment.grayscale_p=0.5")
    main = _batches(jpeg_folder, *extra, workers=0)
    workers = _batches(jpeg_folder, *extra, workers=2)
    assert workers.colour_in_workers and not main.colour_in_workers
    for a, b in zip(main.epoch(2, start_step=1), workers.epoch(2, start_step=1)):
        assert torch.equal(a.index, b.index)
        for x, y in zip(a.views, b.views):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
        for p, q in zip(a.params, b.params):
            assert p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
        torch.testing.assert_close(b.replay(2, b.params[2]), b.views[2], rtol=0, atol=1e-6)
