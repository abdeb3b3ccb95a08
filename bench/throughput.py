"""Throughput of a SimCLR training step: what does the data path cost on top of the model?

    python bench/throughput.py                                  # CPU: width 16, batch 256
    python bench/throughput.py --width 64 --batch 256           # GPU: bf16 by default
    python bench/throughput.py --data-root ~/.cache/cifar10     # real CIFAR-10 pixels

Measured in one process, interleaved round by round so that machine drift cancels:
  (a) bare step: forward of both views, loss, backward, optimizer step on pre-made tensors;
  (b) our full step, pipeline=device: indices -> uint8 images on the device -> BatchAugment;
  (c) the full step with pipeline=torchvision: per-image PIL augmentation in DataLoader
      workers (all available cores), copied to the device.
Then augmentation alone in images/s on one thread: ours (BatchAugment, two views),
torchvision's per-image pipeline, and kornia's batched ops if kornia is installed.
Its last line: `overhead device=X.XX torchvision=Y.YY aug_speedup=Z.Z`.
"""
import argparse
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402

from sslcifar.config import register_configs  # noqa: E402
from sslcifar.data.augment import BatchAugment, BatchNormalize, ViewMaker  # noqa: E402
from sslcifar.data.batch import Batch  # noqa: E402
from sslcifar.data.datasets import ImageSet, load_cifar  # noqa: E402
from sslcifar.data.loader import DeviceBatches, TorchvisionBatches, torchvision_transform  # noqa: E402
from sslcifar.data.sources import ImageSource  # noqa: E402
from sslcifar.data.views import view_sizes, view_specs  # noqa: E402
from sslcifar.distributed import autocast_dtype, pick_device  # noqa: E402
from sslcifar.methods import build_method  # noqa: E402
from sslcifar.schedule import Schedules  # noqa: E402
from sslcifar.step import train_step  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | fp32 | bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--placement", default="auto", choices=("auto", "device", "host"),
                   help="(b): images on the device, or in (pinned) host memory, copied per batch")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers for (c)")
    p.add_argument("--data-root", default=None, help="CIFAR-10 python layout; random pixels if absent")
    p.add_argument("--images", type=int, default=8192,
                   help="images held in memory (raised to batch x steps x (rounds + 1), what "
                        "one epoch per pipeline must hold)")
    p.add_argument("--aug-images", type=int, default=2048, help="images for the augmentation-only timing")
    p.add_argument("--small-crops", type=int, default=0,
                   help="multi-crop: this many small crops after the 2 global views")
    p.add_argument("--small-size", type=int, default=24, help="side of the small crops")
    p.add_argument("--compile-augment", action="store_true",
                   help="(b) with augment.compile=true, and the augmentation alone compiled too")
    return p.parse_args()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    args = parse()
    # the warm-up and every round take `steps` batches from one epoch of each pipeline
    args.images = max(args.images, args.batch * args.steps * (args.rounds + 1))
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("simclr", [f"backbone={args.backbone}", f"backbone.width={args.width}",
                                 f"batch_size={args.batch}", f"device={args.device}",
                                 f"precision={args.precision}",
                                 f"augment.small_crops={args.small_crops}",
                                 f"augment.small_size={args.small_size}"])
    device = pick_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    autocast = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---- data: real CIFAR-10 pixels when given, else random uint8 images
    if args.data_root:
        data = load_cifar("cifar10", args.data_root, "train", download=False).first(args.images)
    else:
        g = torch.Generator().manual_seed(0)
        data = ImageSet(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.zeros(args.images, dtype=torch.long))
    d = cfg.dataset
    specs = view_specs(cfg.augment, d)
    augment = BatchAugment(d.size, d.mean, d.std, **{k: v for k, v in vars(specs[0]).items()
                                                     if k not in ("size", "count")})
    views = ViewMaker(specs, d.mean, d.std, compile=args.compile_augment)
    src = ImageSource(data, device, views, BatchNormalize(d.size, d.mean, d.std), args.placement)
    cpu_src = ImageSource(data, torch.device("cpu"), views, BatchNormalize(d.size, d.mean, d.std))
    device_batches = DeviceBatches(src, args.batch, seed=0, rank=0, world=1)
    tv_batches = TorchvisionBatches(cpu_src, specs, d.mean, d.std, args.batch, seed=0, rank=0,
                                    world=1, num_workers=args.workers, device=device)

    # ---- model and optimizer: the real ones
    torch.manual_seed(0)
    model = build_method(cfg, len(src), 10).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    sizes = view_sizes(specs)
    fixed = [torch.randn(args.batch, 3, s, s, device=device) for s in sizes]
    index = torch.arange(args.batch, device=device)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)

    # SimCLR schedules nothing per step; the loop's one step needs the step's values anyway
    now = Schedules(model.schedules(cfg, args.steps, args.steps), args.steps).at(0)

    def step(batch):
        if args.channels_last:
            batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
        return train_step(model, model, opt, batch, now, scaler, autocast)

    def timed(batches_iter):
        sync(device)
        t = time.perf_counter()
        for batch in batches_iter:
            step(batch)
        sync(device)
        return (time.perf_counter() - t) / args.steps

    def bare():
        for _ in range(args.steps):
            yield Batch(list(fixed), index, labels)

    # one long epoch per pipeline, consumed a few steps at a time: the DataLoader
    # workers start once, as in training, and keep prefetching between rounds
    streams = {"device": device_batches.epoch(0), "torchvision": tv_batches.epoch(0)}

    def take(name):
        for _ in range(args.steps):
            yield next(streams[name])

    timed(bare())                                          # warm-up (cudnn autotune, allocator,
    timed(take("device"))                                  # worker start-up)
    timed(take("torchvision"))
    times = {"bare": [], "device": [], "torchvision": []}
    for r in range(args.rounds):
        times["bare"].append(timed(bare()))
        times["device"].append(timed(take("device")))
        times["torchvision"].append(timed(take("torchvision")))
    med = {k: statistics.median(v) for k, v in times.items()}
    views_per_s = {k: len(sizes) * args.batch / v for k, v in med.items()}

    # ---- augmentation alone, one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = args.aug_images
    imgs = data.images[:n].to(device)
    g = torch.Generator(device=device).manual_seed(0)
    augment(imgs[:256], g)
    sync(device)
    t = time.perf_counter()
    for s in range(0, n, 256):
        augment(imgs[s:s + 256], g)
    sync(device)
    ours = n / (time.perf_counter() - t)
    compiled = None
    if args.compile_augment:            # one view per image, as `augment`, through torch.compile
        import dataclasses
        one = ViewMaker([dataclasses.replace(specs[0], count=1)], d.mean, d.std, compile=True)
        one.make(imgs[:256], g)         # compiles (tens of seconds on a CPU)
        sync(device)
        t = time.perf_counter()
        for s in range(0, n, 256):
            one.make(imgs[s:s + 256], g)
        sync(device)
        compiled = n / (time.perf_counter() - t)
    tf = torchvision_transform(specs[0], d.mean, d.std)
    a = cfg.augment
    from PIL import Image
    pils = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in data.images[:512]]
    t = time.perf_counter()
    for im in pils:
        tf(im)
    theirs = len(pils) / (time.perf_counter() - t)
    kornia_rate = None
    try:
        import kornia.augmentation as K
        kaug = torch.nn.Sequential(
            K.RandomResizedCrop((32, 32), scale=tuple(a.crop_scale)), K.RandomHorizontalFlip(),
            K.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue, p=a.jitter_p),
            K.RandomGrayscale(p=a.grayscale_p)).to(device)
        x = imgs.float() / 255
        kaug(x[:256])
        sync(device)
        t = time.perf_counter()
        for s in range(0, n, 256):
            kaug(x[s:s + 256])
        sync(device)
        kornia_rate = n / (time.perf_counter() - t)
    except ImportError:
        pass
    torch.set_num_threads(threads)

    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"device {name} | {args.backbone} width {args.width} | batch {args.batch} | "
          f"{amp or 'fp32'} | channels_last {args.channels_last} | torch threads {threads} | "
          f"{args.workers} DataLoader workers | {'CIFAR-10' if args.data_root else 'random'} pixels"
          f" | views {'+'.join(str(v) for v in sizes)} px"
          f"{' in host memory' if src.on_host else ''}")
    for k in ("bare", "device", "torchvision"):
        print(f"  ({'abc'['bare device torchvision'.split().index(k)]}) {k:12s} "
              f"{views_per_s[k]:9.0f} views/s  {1000 * med[k]:8.1f} ms/step")
    print(f"  augmentation, 1 thread: ours {ours:,.0f} images/s"
          + (f" (compiled {compiled:,.0f})" if compiled else "") + f", torchvision per-image "
          f"{theirs:,.0f} images/s" + (f", kornia {kornia_rate:,.0f} images/s" if kornia_rate else ""))
    print(f"  peak memory {peak:,.0f} MiB ({'GPU' if device.type == 'cuda' else 'process RSS'})")
    print(f"overhead device={med['device'] / med['bare']:.2f} "
          f"torchvision={med['torchvision'] / med['bare']:.2f} aug_speedup={max(ours, compiled or 0) / theirs:.1f}")


if __name__ == "__main__":
    main()
