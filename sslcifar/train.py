"""The one training loop: every method, every data set, one or many processes.

    python simclr.py backbone=resnet18                       # 1 process (GPU if any)
    python simclr.py dataset=spirograph backbone.width=16    # no download needed
    python moco.py backbone=resnet18 batch_size=256 moco_k=4096 moco_t=0.2
    torchrun --nproc_per_node=4 simclr.py batch_size=1024    # 4 GPUs, global batch 1024

`train(cfg)` reads as sections: run directory, device and processes, data,
model, optimisation, resume, loop, final evaluation. Distributed training,
mixed precision and checkpointing sit behind small helpers that are no-ops
on one CPU process.
"""
import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist
from .config import as_dict
from .data.loader import build_batches
from .data.sources import build_source
from .errors import UserError
from .knn import knn_evaluate
from .methods import build_method
from .metrics import MetricsLog
from .models import resolve_stem
from .optim import build_optimizer, scaled_lr
from .resume import check_same_config, current_overrides
from .schedule import lr_schedule
from .validate import check_disk_space, check_writable, validate_config, validate_data

log = logging.getLogger("sslcifar")

DONE = "done.json"


class Diverged(UserError):
    """The loss became NaN or infinite."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", dist.local_rank() % max(1, torch.cuda.device_count()))
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None means full fp32. 'auto' is bf16 on CUDA (no loss scaling needed) and fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UserError("no run directory: set run_dir=PATH (or launch through simclr.py/moco.py)")


class OnlineProbe(nn.Module):
    """A linear classifier on detached backbone features, trained alongside
    pretraining with its own optimizer: no gradient reaches the backbone."""

    def __init__(self, num_features: int, num_classes: int, lr: float):
        super().__init__()
        self.fc = nn.Linear(num_features, num_classes)
        self.opt = torch.optim.Adam(self.fc.parameters(), lr=lr)

    def step(self, features: torch.Tensor, labels: torch.Tensor):
        """One update on the labelled images of the batch (label -1: STL-10's unlabeled
        split, left out). Returns (correct predictions made before it, labelled images)."""
        logits = self.fc(features.float())
        labelled = labels >= 0
        count = labelled.sum()
        # masked mean, not boolean indexing: no host-device sync, and a batch without
        # any label gives a zero loss instead of NaN
        loss = (F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * labelled).sum() \
            / count.clamp_min(1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return ((logits.argmax(1) == labels) & labelled).sum(), count


class StopRequest:
    """Set by SIGUSR2/SIGTERM (SLURM's warning before a time limit or preemption):
    the loop saves a checkpoint at the next step and exits for requeue."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.previous = {}

    def install(self) -> None:
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:          # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        self.signum = signum

    def forward_to_previous(self) -> None:
        """Hand the signal to whoever listened before us (submitit requeues the job)."""
        prev = self.previous.get(self.signum)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if callable(prev):
            prev(self.signum, None)


def train(cfg) -> Dict[str, float]:
    # ------------------------------------------------------------------ run directory
    validate_config(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    ckpt_dir = run_dir / "checkpoints"
    done_file = run_dir / DONE
    if done_file.exists() and (cfg.resume or _requeued()):
        log.info("%s: this run already finished; not running it again", run_dir)
        return json.loads(done_file.read_text())

    # ------------------------------------------------------------------ device and processes
    device = pick_device(cfg.device)
    dist.init_from_env(device.type)
    rank, world = dist.rank(), dist.world_size()
    is_main = rank == 0
    if is_main:
        check_writable(run_dir)
    amp_dtype = autocast_dtype(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ------------------------------------------------------------------ data
    train_src = build_source(cfg, "train", device)
    validate_data(cfg, train_src, world)
    test_src = build_source(cfg, "test", device)
    batches = build_batches(cfg, train_src, rank, world, device)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    last_step = total_steps if cfg.max_steps is None else min(cfg.max_steps, total_steps)
    num_classes = cfg.dataset.num_classes or (int(train_src.labels.max()) + 1)

    # ------------------------------------------------------------------ model
    torch.manual_seed(cfg.seed)          # same initial weights on every rank
    method = build_method(cfg, len(train_src), num_classes).to(device)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.backbone.sync_bn and world > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    probe = None
    if cfg.eval.online_probe and train_src.has_labels:
        probe = OnlineProbe(method.backbone.num_features, num_classes, cfg.eval.probe_lr).to(device)
    model = method
    if world > 1:
        # buffers (MoCo's queue, SogCLR's u) are kept identical by the methods themselves
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)
    step_fn = torch.compile(model) if cfg.compile else model

    # ------------------------------------------------------------------ optimisation
    o = cfg.optimizer
    base_lr = scaled_lr(o.lr, cfg.batch_size, o.lr_scaling)
    optimizer = build_optimizer([p for p in method.parameters() if p.requires_grad], o.name,
                                base_lr, o.weight_decay, momentum=o.momentum,
                                nesterov=o.nesterov, betas=tuple(o.betas),
                                trust_coefficient=o.trust_coefficient)
    if is_main:
        check_disk_space(run_dir, _checkpoint_bytes(method, probe, o.name))
    warmup = round(cfg.scheduler.warmup_epochs * steps_per_epoch)
    final_lr = cfg.scheduler.final_lr if cfg.scheduler.name == "cosine" else base_lr
    lrs = lr_schedule(base_lr, total_steps, warmup, final_lr,
                      "cosine" if cfg.scheduler.name == "cosine" else "constant").tolist()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())

    # ------------------------------------------------------------------ resume
    metrics = MetricsLog(run_dir, cfg.tensorboard, enabled=is_main)
    step, meters = 0, _new_meters(device)
    if cfg.resume or _requeued():
        state, path = ckpt.load_latest(ckpt_dir, map_location=device)
        if state is None and cfg.resume:
            raise UserError(f"resume=true but {ckpt_dir} holds no checkpoint. Fix: point "
                            f"hydra.run.dir at the run to continue, or drop resume=true")
        if state is not None:
            # every rank checks (same answer everywhere: none is left waiting in a collective)
            for warning in check_same_config(state.get("config", {}), as_dict(cfg), run_dir,
                                             state.get("overrides"), put_back=is_main):
                if is_main:
                    log.warning(warning)
            step = _restore(state, method, optimizer, scaler, probe, metrics, meters)
            if is_main:     # under SLURM every task writes to the same log file
                log.info("resumed from %s at step %d (epoch %d)%s", path, step,
                         step // steps_per_epoch,
                         f" after SLURM requeue #{_requeued()}" if _requeued() else "")
        elif _requeued():
            log.warning("SLURM requeue #%d, but no checkpoint in %s yet: starting from step 0",
                        _requeued(), ckpt_dir)
    if is_main:
        log.info("%s | %s-%s w%d | %s %d train images | batch %d x %d steps/epoch | lr %.4g | "
                 "%s %s | %d process(es)", cfg.method.name, cfg.backbone.name, resolve_stem(cfg.backbone.stem, cfg.dataset.size),
                 cfg.backbone.width, cfg.dataset.name, len(train_src), cfg.batch_size,
                 steps_per_epoch, base_lr, device, amp_dtype or "fp32", world)

    def snapshot() -> dict:
        return _state(cfg, step, step // steps_per_epoch, method, optimizer, scaler, probe,
                      metrics, meters)

    def save():
        if is_main:
            ckpt.save_last(snapshot(), ckpt_dir)
        dist.barrier()

    stop = StopRequest()
    stop.install()

    # ------------------------------------------------------------------ loop
    while step < last_step:
        epoch, start = divmod(step, steps_per_epoch)
        t0 = time.perf_counter()
        bar = _progress(cfg, is_main, epoch, start, steps_per_epoch)
        pending = []            # losses since the last log line, still on the device
        for views, index, labels in batches.epoch(epoch, start):
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            if cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            out = train_step(step_fn, optimizer, scaler, autocast, views, index, labels)
            loss = out["loss"]
            if probe is not None:
                correct, labelled = probe.step(out["features"], labels)
                meters["probe_correct"] += correct
                meters["probe_seen"] += labelled
            step += 1
            pending.append(loss.detach())
            meters["loss_sum"] += loss.detach().double()
            meters["seen"] += 1
            for k, v in out.items():
                if k not in ("loss", "features"):
                    meters.setdefault(k, torch.zeros((), dtype=torch.float64, device=device))
                    meters[k] += v.double()
            # the only host-device synchronisation: every log_every steps
            at_log = step % cfg.log_every == 0 or step == last_step or step % steps_per_epoch == 0
            stopping = stop.signum is not None
            if world > 1:
                # each rank may see the signal at a different step; stopping on one rank
                # alone would leave the others waiting in a collective. The ranks agree
                # at log steps, which they all reach together.
                stopping = at_log and dist.any_rank(stopping, device)
            if at_log or stopping:
                _check_finite(pending, step, steps_per_epoch, ckpt_dir)
                if bar is not None:
                    bar.update(len(pending) * cfg.batch_size)
                    bar.set_postfix(loss=f"{pending[-1].item():.4f}", lr=f"{lrs[step - 1]:.4g}")
                metrics.scalar("train/loss", pending[-1].item(), step)
                metrics.scalar("train/lr", lrs[step - 1], step)
                pending = []
            if stopping:
                if is_main:     # all ranks stop at this step; one line says so
                    log.warning("signal %s received at step %d: saving a checkpoint and stopping "
                                "for requeue", stop.signum or "(on another rank)", step)
                save()
                stop.forward_to_previous()
                raise SystemExit(0)
            if step == last_step:
                break
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        steps_done = step - epoch * steps_per_epoch - start
        epoch_end = step % steps_per_epoch == 0
        evaluate = step == last_step or (epoch_end and cfg.eval.knn_every > 0
                                         and (epoch + 1) % cfg.eval.knn_every == 0)
        if epoch_end or step == last_step:
            row = _epoch_row(epoch, step, meters, lrs[step - 1], cfg.batch_size * steps_done / elapsed,
                             probe is not None)
            if not epoch_end:
                row["partial"] = True       # stopped by max_steps mid-epoch; dropped on resume
            if evaluate:
                row.update(_knn(cfg, method, train_src, test_src, is_main))
            if is_main:
                metrics.write(row)
                log.info("epoch %d step %d | %s", epoch, step, " ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "step")
                    and isinstance(v, float)))
            if epoch_end:
                meters = _new_meters(device)
            save()
            if is_main and epoch_end and cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0:
                ckpt.atomic_save(snapshot(), ckpt_dir / f"epoch_{epoch + 1}.pt")

    # ------------------------------------------------------------------ final
    final = {k: v for k, v in metrics.rows[-1].items()} if metrics.rows else {"step": step}
    final["finished"] = step >= total_steps
    if is_main:
        if step >= total_steps:
            done_file.write_text(json.dumps(final))
        _figures(cfg, run_dir, method, test_src)
        summary = " ".join(f"{k}={v:.4f}" for k, v in final.items()
                           if k.startswith(("knn", "online", "test", "loss")) and isinstance(v, float))
        print(f"final: {summary} (run dir {run_dir})", flush=True)
    metrics.close()
    dist.shutdown()
    return final


# ---------------------------------------------------------------------- helpers of the loop

def train_step(model, optimizer, scaler, autocast, views, index, labels) -> dict:
    """Forward under autocast, backward (loss-scaled for fp16), optimizer step.
    No host-device synchronisation: the loss stays a device tensor."""
    with autocast:
        out = model(views, index, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return out


def _checkpoint_bytes(method: nn.Module, probe, optimizer_name: str) -> int:
    """About the size of a checkpoint: the model's tensors, the optimizer's state (one
    tensor per parameter for SGD and LARS momentum, two for AdamW), the probe's."""
    def size(module):
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    per_param = 2 if optimizer_name == "adamw" else 1
    return size(method) + per_param * params + (3 * size(probe) if probe is not None else 0)


def _requeued() -> int:
    """How often SLURM has started this job again after a preemption, time limit or
    requeue (0: its first run). A requeued job resumes by itself."""
    import os
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _new_meters(device) -> dict:
    z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    return {"loss_sum": z(), "seen": z(), "probe_correct": z(), "probe_seen": z()}


def _epoch_row(epoch, step, meters, lr, images_per_s, has_probe) -> dict:
    n = max(meters["seen"].item(), 1)
    row = {"epoch": epoch, "step": step, "loss": meters["loss_sum"].item() / n, "lr": lr,
           "images_per_s": images_per_s}
    if has_probe:
        row["online_top1"] = 100.0 * meters["probe_correct"].item() / max(meters["probe_seen"].item(), 1)
    for k, v in meters.items():
        if k not in ("loss_sum", "seen", "probe_correct", "probe_seen"):
            row[k] = v.item() / n
    return row


def _check_finite(pending, step, steps_per_epoch, ckpt_dir) -> None:
    values = torch.stack(pending).float().tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            bad = step - len(values) + i + 1
            raise Diverged(f"loss is {v} at epoch {(bad - 1) // steps_per_epoch} step {bad}: "
                           f"training stopped; the last good checkpoint is kept in {ckpt_dir}. "
                           f"Fix: lower optimizer.lr, raise loss.temperature or use precision=fp32")


def _knn(cfg, method, train_src, test_src, is_main) -> dict:
    """kNN on the test split, plus the method's own test metrics where it has any
    (the supervised baseline's classifier accuracy, `test_top1`)."""
    if not is_main and dist.world_size() > 1:
        return {}
    row = knn_evaluate(method.backbone, train_src, test_src, cfg.eval.knn_k,
                       cfg.eval.knn_temperature, cfg.eval.knn_max_train)
    if hasattr(method, "evaluate"):
        row.update(method.evaluate(test_src))
    return row


def _figures(cfg, run_dir, method, test_src) -> None:
    """curves.png from metrics.jsonl; tsne.png of test embeddings when eval.tsne."""
    from .figures import curves_png, tsne_png
    from .knn import extract_features
    if (run_dir / "metrics.jsonl").exists():
        curves_png(run_dir)
    if cfg.eval.tsne:
        n = min(cfg.eval.tsne_points, len(test_src))
        feats = extract_features(method.backbone, test_src, limit=n)
        labels = (test_src.labels[:n] if test_src.task == "classification"
                  else test_src.targets[:n, 0])          # Spirograph: coloured by m
        tsne_png(feats.cpu(), labels.cpu(), run_dir / "tsne.png", classes=test_src.classes)


def _progress(cfg, is_main, epoch, start, total):
    if not (cfg.progress and is_main):
        return None
    from tqdm import tqdm
    # counted in images, so the bar's rate reads as images/s (global batch)
    b = cfg.batch_size
    return tqdm(total=total * b, initial=start * b, desc=f"epoch {epoch}", unit="img",
                unit_scale=True, leave=False, dynamic_ncols=True)


def _state(cfg, step, epochs_done, method, optimizer, scaler, probe, metrics, meters) -> dict:
    # `epoch`: completed epochs, as MoCo and SupContrast store it (the schedule follows `step`)
    state = {"step": step, "epoch": epochs_done, "model": method.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "config": as_dict(cfg), "overrides": current_overrides(), "metrics": metrics.rows,
             "meters": {k: v.cpu() for k, v in meters.items()},
             "rng": {"torch": torch.get_rng_state()}}
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    if probe is not None:
        state["probe"] = probe.state_dict()
        state["probe_optimizer"] = probe.opt.state_dict()
    return state


def _restore(state, method, optimizer, scaler, probe, metrics, meters) -> int:
    try:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"the checkpoint does not fit this config ({str(e).splitlines()[0]}). "
                        f"Fix: resume with the same method/backbone/optimizer overrides") from None
    scaler.load_state_dict(state["scaler"])
    if probe is not None and "probe" in state:
        probe.load_state_dict(state["probe"])
        probe.opt.load_state_dict(state["probe_optimizer"])
    # a row of a run stopped mid-epoch by max_steps is redone when the epoch ends
    metrics.restore([r for r in state.get("metrics", []) if not r.get("partial")])
    for k, v in state.get("meters", {}).items():
        meters[k] = v.to(meters["seen"].device)
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])
