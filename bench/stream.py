"""The streaming pipeline against torchvision's per-image ImageFolder pipeline.

    python bench/stream.py                           # 1000 JPEGs of 256-500 px, 224 px views
    python bench/stream.py --images 2000 --size 96 --workers 2
    python bench/stream.py --compile                 # ours with augment.compile=true
    python bench/stream.py --compile --rounds 3 --seconds 10   # best of 3 interleaved rounds
    python bench/stream.py --device cuda --dali --workers 16   # on a GPU: colour ops there, GPU memory

A folder of JPEGs of 256-500 px on a side is written first (the workplace's CIFAR-10
images, upscaled; ../shared/data). Then, each in its own process (so that its peak memory
is its own), as many two-view batches as fit in --seconds are made (epoch after epoch, the
workers started again for each, as in training) by
  ours:        dataset.pipeline=stream: workers decode each file once (JPEG draft mode when
               the crops are small), crop and resize both views on the full image, and (on a
               CPU) apply the colour ops (jitter in a random order, grayscale) batched to the
               batch they made; with --compile the colour ops run in the main process through
               torch.compile, compiled before the timing starts;
  ours-workers: the workers' part of ours alone (decode, crops, resizes; no colour ops):
               what the training loop waits for when a GPU does the colour ops;
  torchvision: datasets.ImageFolder with the same augmentation per image (RandomResizedCrop,
               flip, ColorJitter, RandomGrayscale, ToTensor, Normalize) twice per image;
  dali:        dataset.pipeline=dali (--dali): the workers read the files and draw the boxes,
               DALI decodes each box (ROI), resizes and flips; the colour ops as ours (on a
               CPU DALI and the colour ops run in each worker, a DALI pipeline per worker);
  dali-own:    DALI's own pipeline alone, as a reference (--dali): its file reader, random
               crop decode, resize, flip, colour twist and normalisation, two views, no
               grayscale (none in DALI), its order and boxes its own (no exact resume).
Both with the same DataLoader workers. Prints images/s (an image = its two views) and the
peak RSS of the main process plus its workers, and the ratio.
"""
import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_folder(root: Path, n: int, seed: int = 0) -> None:
    """n JPEGs (quality 90) of random sizes in 256-500 px, in 10 class folders."""
    import io
    import random
    from PIL import Image
    if (root / "done").exists():
        return
    shared = Path(os.environ.get("SSLCIFAR_SHARED_DATA", REPO.parent / "shared" / "data"))
    rng = random.Random(seed)
    written = 0
    with tarfile.open(shared / "cifar10-jpeg.tar.gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] != "train":
                continue
            img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            w, h = rng.randint(256, 500), rng.randint(256, 500)
            folder = root / "train" / parts[1]
            folder.mkdir(parents=True, exist_ok=True)
            img.resize((w, h), Image.BICUBIC).save(folder / parts[2], quality=90)
            written += 1
            if written == n:
                break
    (root / "done").write_text("")


def peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024


def one(kind: str, root: Path, size: int, batch: int, workers: int, seconds: float,
        compile: bool = False, device: str = "cpu") -> dict:
    import torch
    # the main process makes the colour ops on the core the workers leave (2 threads: 20% slower)
    torch.set_num_threads(max(1, os.cpu_count() - workers) if workers else os.cpu_count())
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(dev)
        used_before = total - free
    if kind == "dali-own":
        get = dali_own(root, size, batch, workers, dev)
    elif kind in ("ours", "ours-workers", "dali"):
        from hydra import compose, initialize_config_dir
        from sslcifar.config import register_configs
        from sslcifar.data.sources import build_source
        from sslcifar.data.stream import StreamBatches
        register_configs()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("simclr", ["dataset=imagefolder", f"dataset.root={root}",
                                     f"dataset.size={size}", "dataset.pipeline=stream"])
        src = build_source(cfg, "train", dev, augment=True)
        views_from_bytes = None
        if kind == "dali":
            from sslcifar.data.dali import DaliViews
            views_from_bytes = DaliViews(batch, dev, workers)
        batches = StreamBatches(src, batch, 0, 0, 1, workers, dev, compile=compile,
                                views_from_bytes=views_from_bytes)
        if kind in ("ours", "dali"):
            it = endless(batches.epoch)
            get = lambda: next(it).views  # noqa: E731
        else:       # the workers' part only: what a GPU, doing the colour ops, would wait for
            from torch.utils.data import DataLoader
            n = len(batches.dataset) // batch * batch
            order = torch.randperm(len(batches.dataset))[:n].view(-1, batch).tolist()
            loader = DataLoader(batches.dataset, batch_sampler=[[(i, i) for i in b] for b in order],
                                num_workers=workers)
            it = endless(lambda e: loader)
            get = lambda: next(it)[0]  # noqa: E731
    else:
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms as T
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                        T.RandomGrayscale(0.2), T.ToTensor(),
                        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        ds = datasets.ImageFolder(str(root / "train"), transform=lambda im: (tf(im), tf(im)))
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                            drop_last=True, pin_memory=dev.type == "cuda")
        it = endless(lambda e: loader)
        get = lambda: [v.to(dev, non_blocking=True) for v in next(it)[0]]  # noqa: E731
    if dev.type == "cuda":          # a batch counts once the GPU has made it
        get = (lambda g: lambda: (g(), torch.cuda.synchronize(dev)))(get)
    get()                                          # workers up, first batch out
    t, images = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        get()
        images += batch
    out = {"images_per_s": images / (time.perf_counter() - t), "peak_rss_mib": peak_rss_mib()}
    if dev.type == "cuda":      # the device's memory in use, ours (torch's cache) and DALI's pools
        free, total = torch.cuda.mem_get_info(dev)
        out["gpu_mib"] = (total - free - used_before) / 2**20
    return out


def endless(epoch):
    """The batches of epoch(0), epoch(1), ... in turn, as a training run reads them: a small
    folder does not run dry within --seconds (with many workers, as on a GPU machine, 1000
    images are a few batches each; every epoch starts its workers again, for every row)."""
    for e in itertools.count():
        yield from epoch(e)


def dali_own(root: Path, size: int, batch: int, threads: int, device):
    """DALI's own augmentation pipeline (the reference row), on the CPU or with nvJPEG and
    the GPU: a batch getter."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    gpu = device.type == "cuda"

    @pipeline_def(batch_size=batch, num_threads=threads,
                  device_id=(device.index or 0) if gpu else None)
    def views():
        files, _ = fn.readers.file(file_root=str(root / "train"), random_shuffle=True, seed=0)
        out = []
        for _ in range(2):
            img = fn.decoders.image_random_crop(files, device="mixed" if gpu else "cpu",
                                                output_type=types.RGB, random_area=[0.08, 1.0])
            img = fn.resize(img, resize_x=size, resize_y=size, antialias=True)
            img = fn.color_twist(img, brightness=fn.random.uniform(range=[0.6, 1.4]),
                                 contrast=fn.random.uniform(range=[0.6, 1.4]),
                                 saturation=fn.random.uniform(range=[0.6, 1.4]),
                                 hue=fn.random.uniform(range=[-36.0, 36.0]))
            out.append(fn.crop_mirror_normalize(img, mirror=fn.random.coin_flip(),
                                                mean=[124.0, 116.0, 104.0], std=[58.0, 57.0, 57.0]))
        return tuple(out)
    pipe = views()
    pipe.build()
    if gpu:             # the batch stays on the GPU (as_tensor), as a training loop would take it
        return lambda: pipe.run()[0].as_tensor()
    return lambda: pipe.run()[0].as_array()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--folder", default="outputs/bench_stream_images")
    ap.add_argument("--compile", action="store_true", help="ours with augment.compile=true")
    ap.add_argument("--rounds", type=int, default=1, help="each kind this often, in turn; best kept")
    ap.add_argument("--dali", action="store_true", help="also the dali and dali-own rows")
    ap.add_argument("--device", default="cpu",
                    help="the training device: cuda makes the colour ops there (ours, dali), "
                         "moves torchvision's batches there, and reports GPU memory")
    ap.add_argument("--one", choices=("ours", "ours-workers", "torchvision", "dali", "dali-own"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            sys.exit(f"bench/stream.py --device {args.device}: no CUDA device on this machine; "
                     "run it where there is one, or without --device (the CPU)")
    root = Path(args.folder).resolve()
    if args.one:
        print(json.dumps(one(args.one, root, args.size, args.batch, args.workers, args.seconds,
                             args.compile, args.device)))
        return
    make_folder(root, args.images)
    res = {}
    kinds = ("torchvision", "ours", "ours-workers") + (("dali", "dali-own") if args.dali else ())
    for _ in range(args.rounds):    # the kinds in turn, each round: a shared machine's noise hits all
        for kind in kinds:
            proc = subprocess.run([sys.executable, __file__, "--one", kind, "--folder", str(root),
                                   "--size", str(args.size), "--batch", str(args.batch),
                                   "--workers", str(args.workers), "--seconds", str(args.seconds),
                                   "--device", args.device]
                                  + ["--compile"] * args.compile, capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                      filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))))
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if kind not in res or r["images_per_s"] > res[kind]["images_per_s"]:
                res[kind] = r           # the best round of each
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l), "?")
    print(f"{cpu}, {os.cpu_count()} cores; {args.images} JPEGs of 256-500 px, two {args.size} px "
          f"views per image, batch {args.batch}, {args.workers} DataLoader workers each, "
          f"device {args.device}"
          + (", ours compiled" if args.compile else "")
          + (f"; best of {args.rounds} rounds" if args.rounds > 1 else ""))
    for kind in kinds:
        r = res[kind]
        print(f"  {kind:12s} {r['images_per_s']:8.1f} images/s   peak RSS {r['peak_rss_mib']:7.0f} MiB"
              + (f"   GPU {r['gpu_mib']:7.0f} MiB" if "gpu_mib" in r else ""))
    tv = res["torchvision"]["images_per_s"]
    print(f"stream_speedup={res['ours']['images_per_s'] / tv:.2f} "
          f"workers_only={res['ours-workers']['images_per_s'] / tv:.2f}"
          + (f" dali={res['dali']['images_per_s'] / tv:.2f} "
             f"dali_own={res['dali-own']['images_per_s'] / tv:.2f}" if args.dali else ""))


if __name__ == "__main__":
    main()
