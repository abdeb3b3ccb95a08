"""The one training loop: every method, every data set, one or many processes.

    python simclr.py backbone=resnet18                       # 1 process (GPU if any)
    python simclr.py dataset=spirograph backbone.width=16    # no download needed
    python moco.py backbone=resnet18 batch_size=256 moco_k=4096 moco_t=0.2
    torchrun --nproc_per_node=4 simclr.py batch_size=1024    # 4 GPUs, global batch 1024

`train(cfg)` reads as four sections, one function each: `set_up` (run directory, device
and processes, data, model, optimisation, schedules, resume), `one_epoch` (the steps),
`end_of_epoch` (the metrics row, kNN, checkpoints) and `finish` (linear evaluation,
done.json, figures). What they share is a `Run`; what a checkpoint holds is its
`RunState` (`sslcifar.checkpoint`). The loop owns time: every per-step value (learning
rate, weight decay, and each method's own: EMA momentum, teacher temperature, ...) is an
array computed once (`sslcifar.schedule`), and each step's values reach the method as a
`Now`; one step is `sslcifar.step.train_step`. Distributed training, mixed precision and
checkpointing sit behind small helpers that are no-ops on one CPU process. The run's life
goes to `events.jsonl` (`sslcifar.events`), which the sweep report reads.
"""
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist
from .config import as_dict
from .data.loader import build_batches
from .data.sources import build_source
from .errors import UserError
from .events import Events
from .features import extract
from .knn import knn_scores
from .methods import build_method
from .metrics import MetricsLog, WandbRun, epoch_row, new_meters, progress_enabled
from .models import resolve_stem
from .optim import build_optimizer, exclude_from_decay, scaled_lr
from .probe import OnlineProbe
from .resume import EvaluationInterrupted, StopRequest, check_same_config, current_overrides, requeued
from .schedule import Schedules, cosine_scheduler
from .step import check_schedules, train_step
from .validate import (check_disk_space, check_writable, schedule_warnings, validate_config,
                       validate_data)
from .version import code_version

log = logging.getLogger("sslcifar")

DONE = "done.json"


class Diverged(UserError):
    """The loss became NaN or infinite."""


class Stopped(SystemExit):
    """The run stopped on a signal after saving: exit 0 for the cluster's (SIGUSR2/SIGTERM,
    so submitit requeues), 130 for Ctrl-C."""


@dataclass
class Run:
    """What the sections of `train` share."""
    cfg: object
    run_dir: Path
    device: torch.device
    world: int
    is_main: bool
    train_src: object
    test_src: object
    batches: object                 # .epoch(epoch, start_step) -> Batch per step
    state: ckpt.RunState            # what a checkpoint saves
    model: nn.Module                # what runs the forward: the method, wrapped (DDP, compile)
    schedules: Schedules            # "lr", "weight_decay" (when scheduled), the method's
    base_lr: float
    last_step: int                  # the step this session stops at (epochs, or max_steps)
    scaler: "torch.amp.GradScaler"
    autocast: object
    stop: StopRequest
    events: Events

    @property
    def steps_per_epoch(self) -> int:
        return self.state.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    def save(self) -> None:
        """last.pt (rank 0), then every rank waits for it."""
        if self.is_main:
            ckpt.save_last(self.state.snapshot(), self.run_dir / "checkpoints")
        dist.barrier()


def default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UserError("no run directory: set run_dir=PATH (or launch through simclr.py/moco.py)")


def train(cfg) -> Dict[str, float]:
    validate_config(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    if (run_dir / DONE).exists() and (cfg.resume or requeued()):
        done = json.loads((run_dir / DONE).read_text())
        if cfg.resume and done.get("epochs", cfg.epochs) != cfg.epochs:
            raise UserError(f"{run_dir} finished its {done['epochs']} epochs (done.json); "
                            f"resume=true does not extend a finished run (its schedules ended "
                            f"with it). Fix: start a new run with epochs={cfg.epochs} (drop "
                            f"resume=true and hydra.run.dir); the finished encoder is "
                            f"{run_dir}/checkpoints/last.pt")
        log.info("%s: this run already finished; not running it again", run_dir)
        return done
    run = None
    try:
        run = set_up(cfg, run_dir)
        redo_interrupted_evaluation(run)
        while run.state.step < run.last_step:
            steps, seconds = one_epoch(run)
            end_of_epoch(run, steps, seconds)
        return finish(run)
    except BaseException as e:      # the event says why the run ended; the error propagates
        if not isinstance(e, Stopped):          # a signal's stop has its own event
            events = run.events if run is not None else Events(run_dir, enabled=dist.rank() == 0)
            events.write("failed", step=run.state.step if run is not None else 0,
                         error=_one_line(e))
        raise


def _one_line(e: BaseException) -> str:
    """The line a user sees for this error (`error: ...` for a UserError, as on stderr)."""
    text = f"error: {e}" if isinstance(e, UserError) else f"{type(e).__name__}: {e}".rstrip(": ")
    return text.strip().splitlines()[0]


# ---------------------------------------------------------------------- set-up

def set_up(cfg, run_dir: Path) -> Run:
    """Device and processes, data, model, optimisation, schedules; then resume if asked."""
    device = dist.pick_device(cfg.device)
    dist.init_from_env(device.type)
    rank, world = dist.rank(), dist.world_size()
    is_main = rank == 0
    if is_main:
        check_writable(run_dir)
    amp_dtype = dist.autocast_dtype(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # data: the order and the views are functions of (seed, epoch, step, rank)
    train_src = build_source(cfg, "train", device, augment=True)
    validate_data(cfg, train_src, world)
    test_src = build_source(cfg, "test", device)
    batches = build_batches(cfg, train_src, rank, world, device)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    num_classes = cfg.dataset.num_classes or (int(train_src.labels.max()) + 1)

    # model: the same initial weights on every rank
    torch.manual_seed(cfg.seed)
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
    model = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model

    # optimisation and time: one array per scheduled quantity
    o = cfg.optimizer
    base_lr = scaled_lr(o.lr, cfg.batch_size, o.lr_scaling)
    groups = method.param_groups()
    if o.exclude_bias_n_norm_wd:
        groups = exclude_from_decay(groups, method)
    for g in groups:            # a group that sets its own weight decay keeps it
        g["wd_schedule"] = "weight_decay" not in g
    optimizer = build_optimizer(groups, o, base_lr)
    schedules = Schedules(time_arrays(cfg, method, base_lr, total_steps, steps_per_epoch),
                          steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())

    wandb_run = None
    if cfg.wandb and is_main:
        wandb_run = WandbRun(run_dir, {**as_dict(cfg), "overrides": current_overrides(),
                                       "code": code_version()},
                             cfg.wandb_project, cfg.wandb_entity, cfg.wandb_name)
    metrics = MetricsLog(run_dir, cfg.tensorboard, enabled=is_main, wandb=wandb_run)
    state = ckpt.RunState(method, optimizer, scaler, probe, metrics, new_meters(device),
                          as_dict(cfg), current_overrides(), steps_per_epoch)
    if is_main:
        check_disk_space(run_dir, ckpt.estimated_bytes(method, probe, o.name))
    run = Run(cfg, run_dir, device, world, is_main, train_src, test_src, batches, state, model,
              schedules, base_lr, total_steps if cfg.max_steps is None else min(cfg.max_steps, total_steps),
              scaler, autocast, StopRequest(), Events(run_dir, enabled=is_main))
    resume(run)
    if is_main:
        for warning in schedule_warnings(cfg):
            log.warning(warning)
        log.info("%s | %s w%d | %s %d train images, %s | batch %d x %d steps/epoch | "
                 "lr %.4g | %s %s | %d process(es)", cfg.method.name, _backbone_line(cfg),
                 cfg.backbone.width,
                 cfg.dataset.name, len(train_src), _views_line(cfg), cfg.batch_size,
                 steps_per_epoch, base_lr, device, amp_dtype or "fp32", world)
    run.stop.install()
    return run


def group_lr(group: dict, base_lr: float, lr: float) -> float:
    """A parameter group's learning rate at a step whose scheduled lr is `lr`: the base lr at
    every step for a `fixed_lr` group (SimSiam's predictor); for a group with its own
    `base_lr` (All4One's transformer), the schedule's shape scaled to that base."""
    if group.get("fixed_lr"):
        return group.get("base_lr", base_lr)
    if "base_lr" in group:
        return lr * group["base_lr"] / base_lr if base_lr > 0 else 0.0
    return lr


def time_arrays(cfg, method, base_lr: float, total_steps: int, steps_per_epoch: int) -> dict:
    """Every per-step array of the run: "lr" (linear warm-up, then cosine to final_lr or
    constant), "weight_decay" (cosine to final_weight_decay, when set), and the method's
    own (`Method.schedules`)."""
    s = cfg.scheduler
    final_lr = s.final_lr if s.name == "cosine" else base_lr
    arrays = {"lr": cosine_scheduler(base_lr, final_lr, total_steps,
                                     round(s.warmup_epochs * steps_per_epoch), s.warmup_start_lr)}
    if s.final_weight_decay is not None:
        arrays["weight_decay"] = cosine_scheduler(cfg.optimizer.weight_decay,
                                                  s.final_weight_decay, total_steps)
    own = method.schedules(cfg, total_steps, steps_per_epoch)
    check_schedules(method, own)
    clash = set(own) & set(arrays)
    if clash:
        raise ValueError(f"{type(method).__name__}.schedules() reuses the loop's names {clash}")
    return {**arrays, **own}


def resume(run: Run) -> None:
    """resume=true, or a SLURM requeue: continue from the newest loadable checkpoint, with
    the same config (sslcifar.resume); else start at step 0."""
    cfg, folder = run.cfg, run.run_dir / "checkpoints"
    restart = requeued()
    saved, path = (None, None)
    if cfg.resume or restart:
        saved, path = ckpt.load_latest(folder, map_location=run.device)
        if saved is None and cfg.resume:
            raise UserError(f"resume=true but {folder} holds no checkpoint. Fix: point "
                            f"hydra.run.dir at the run to continue, or drop resume=true")
    if saved is None:
        if restart:
            log.warning("SLURM requeue #%d, but no checkpoint in %s yet: starting from step 0",
                        restart, folder)
        run.events.write("started", step=0, restart=restart)
        return
    # every rank checks (same answer everywhere: none is left waiting in a collective)
    for warning in check_same_config(saved.get("config", {}), run.state.config, run.run_dir,
                                     saved.get("overrides"), put_back=run.is_main):
        if run.is_main:
            log.warning(warning)
    run.state.restore(saved)
    step = run.state.step
    run.events.write("resumed", step=step, restart=restart, checkpoint=str(path))
    if run.is_main:     # under SLURM every task writes to the same log file
        log.info("resumed from %s at step %d (epoch %d)%s", path, step,
                 step // run.steps_per_epoch, f" after SLURM requeue #{restart}" if restart else "")


# ---------------------------------------------------------------------- one epoch

def one_epoch(run: Run):
    """The steps of one epoch, from the run's step to the epoch's end or the run's last
    step; a stop signal saves and exits for requeue. Returns (steps taken, seconds)."""
    cfg, state = run.cfg, run.state
    method, optimizer, meters = state.method, state.optimizer, state.meters
    lrs, wds = run.schedules["lr"], run.schedules.arrays.get("weight_decay")
    epoch, start = divmod(state.step, run.steps_per_epoch)
    t0 = time.perf_counter()
    bar = _progress(cfg, run.is_main, epoch, start, run.steps_per_epoch)
    pending = []            # losses since the last log line, still on the device
    for batch in run.batches.epoch(epoch, start):
        step = state.step
        for group in optimizer.param_groups:
            group["lr"] = group_lr(group, run.base_lr, lrs[step])
            if wds is not None and group["wd_schedule"]:
                group["weight_decay"] = wds[step]
        if cfg.channels_last:
            batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
        out = train_step(run.model, method, optimizer, batch, run.schedules.at(step),
                         run.scaler, run.autocast)
        if state.probe is not None:
            correct, labelled = state.probe.step(out["features"], batch.labels)
            meters["probe_correct"] += correct
            meters["probe_seen"] += labelled
        state.step = step = step + 1
        loss = out["loss"].detach()
        pending.append(loss)
        meters["loss_sum"] += loss.double()
        meters["seen"] += 1
        for k, v in out.items():
            if k not in ("loss", "features"):
                meters.setdefault(k, torch.zeros((), dtype=torch.float64, device=run.device))
                meters[k] += v.double()
        # the only host-device synchronisation: every log_every steps
        at_log = step % cfg.log_every == 0 or step == run.last_step or step % run.steps_per_epoch == 0
        stopping = run.stop.signum is not None
        if run.world > 1:
            # each rank may see the signal at a different step; stopping on one rank alone
            # would leave the others waiting in a collective. The ranks agree at log
            # steps, which they all reach together.
            stopping = at_log and dist.any_rank(stopping, run.device)
        if at_log or stopping:
            _check_finite(pending, step, run.steps_per_epoch, run.run_dir / "checkpoints")
            if bar is not None:
                bar.update(len(pending) * cfg.batch_size)
                bar.set_postfix(loss=f"{pending[-1].item():.4f}", lr=f"{lrs[step - 1]:.4g}")
            state.metrics.log_step(step, pending[-1].item(), lrs[step - 1])
            pending = []
        if stopping:
            _stop_for_requeue(run)
        if step == run.last_step:
            break
    if bar is not None:
        bar.close()
    return state.step - epoch * run.steps_per_epoch - start, time.perf_counter() - t0


def _stop_for_requeue(run: Run, saved: bool = False) -> None:
    """A signal: all ranks stop at this step, save (unless just `saved`) and exit. SLURM's
    warning before a time limit or preemption goes on to whoever listened before (submitit
    requeues); Ctrl-C ends the command with exit status 130."""
    import signal
    signum = run.stop.signum
    name = signal.Signals(signum).name if signum else None
    if not saved:
        run.save()
    run.events.write("stopped", step=run.state.step, reason="signal", signal=name)
    if run.is_main and run.stop.interrupted:
        log.warning("Ctrl-C at step %d: checkpoint saved in %s; continue it with the same "
                    "overrides and resume=true hydra.run.dir=%s (twice Ctrl-C: stop at once, "
                    "nothing saved)", run.state.step, run.run_dir / "checkpoints", run.run_dir)
    elif run.is_main:
        log.warning("signal %s received at step %d: saved a checkpoint and stopped for "
                    "requeue", name or "(on another rank)", run.state.step)
    run.stop.forward_to_previous()
    raise Stopped(130 if run.stop.interrupted else 0)


# ---------------------------------------------------------------------- end of an epoch

def end_of_epoch(run: Run, steps_done: int, seconds: float) -> None:
    """At an epoch's end, or where max_steps stops the run: the metrics row (kNN when due),
    last.pt (and epoch_N.pt every checkpoint_every epochs), the event."""
    cfg, state = run.cfg, run.state
    step = state.step
    epoch = (step - 1) // run.steps_per_epoch
    epoch_end = step % run.steps_per_epoch == 0
    last = step == run.last_step
    if not (epoch_end or last):
        return
    evaluate = last or (epoch_end and cfg.eval.knn_every > 0 and (epoch + 1) % cfg.eval.knn_every == 0)
    row = epoch_row(epoch, step, state.meters, run.schedules["lr"][step - 1],
                    cfg.batch_size * steps_done / seconds, state.probe is not None)
    if "z_std" in row and getattr(state.method, "z_dim", None):
        row["z_dim"] = state.method.z_dim           # z_std's reference: 1/sqrt(z_dim)
    if not epoch_end:
        row["partial"] = True       # stopped by max_steps mid-epoch; dropped on resume
    if evaluate:
        try:        # a stop signal here ends the evaluation at once (one process)
            with run.stop.evaluation(interruptible=run.world == 1):
                row.update(_evaluate(cfg, state.method, state.probe, run.train_src, run.test_src,
                                     run.is_main))
        except EvaluationInterrupted:
            row["evaluation_interrupted"] = True        # measured again on resume
    if run.is_main:
        state.metrics.write(row)
        log.info("epoch %d step %d | %s", epoch, step, " ".join(
            f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "step")
            and isinstance(v, float)))
    if epoch_end:
        state.meters = new_meters(run.device)
    run.save()
    if run.is_main and epoch_end and cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0:
        ckpt.atomic_save(state.snapshot(), run.run_dir / "checkpoints" / f"epoch_{epoch + 1}.pt")
    if epoch_end:
        run.events.write("epoch_end", epoch=epoch, step=step)
    if run.stop.signum is not None and run.world == 1:
        _stop_for_requeue(run, saved=True)


def redo_interrupted_evaluation(run: Run) -> None:
    """A run stopped during an end-of-epoch evaluation resumes by measuring it again, so
    its metrics are those of an uninterrupted run."""
    rows = run.state.metrics.rows
    if not (rows and rows[-1].pop("evaluation_interrupted", False)):
        return
    if rows[-1]["step"] == run.state.step:
        rows[-1].update(_evaluate(run.cfg, run.state.method, run.state.probe, run.train_src,
                                  run.test_src, run.is_main))
    run.state.metrics.restore(rows)
    run.save()


# ---------------------------------------------------------------------- finish

def finish(run: Run) -> Dict[str, float]:
    """The protocol's linear evaluation (eval.linear), done.json (or the max_steps stop),
    the figures and the `final:` line."""
    cfg, state, run_dir = run.cfg, run.state, run.run_dir
    metrics, step = state.metrics, state.step
    if run.is_main and cfg.eval.linear and metrics.rows:
        try:
            with run.stop.evaluation(interruptible=run.world == 1):
                linear = _linear(cfg, state.method, run.train_src, run.test_src, run.device)
        except EvaluationInterrupted:       # resume=true evaluates it again
            _stop_for_requeue(run, saved=True)
        metrics.rows[-1].update(linear)
        metrics.restore(metrics.rows)
        metrics.scalars({f"epoch/{k}": v for k, v in linear.items() if isinstance(v, float)}, step)
        log.info("linear evaluation (%s): %s", cfg.eval.linear,
                 " ".join(f"{k}={v:.4g}" for k, v in linear.items() if isinstance(v, float)))
    final = dict(metrics.rows[-1]) if metrics.rows else {"step": step}
    final["finished"] = step >= run.total_steps
    final["epochs"] = cfg.epochs
    if run.is_main:
        final["code"] = code_version()
        if final["finished"]:
            (run_dir / DONE).write_text(json.dumps(final))
            run.events.write("finished", step=step)
        else:       # max_steps: the report shows it stopped, not running; resume continues
            run.events.write("stopped", step=step, reason="max_steps")
        try:
            with run.stop.evaluation(interruptible=run.world == 1):
                _figures(cfg, run_dir, state.method, run.test_src)
        except EvaluationInterrupted:
            log.warning("stopped while drawing the figures: the run is finished, its figures "
                        "are not (python -m sslcifar.figures curves %s draws the curves)", run_dir)
            raise Stopped(130 if run.stop.interrupted else 0) from None
        for name in ("curves", "tsne"):
            metrics.image(name, run_dir / f"{name}.png", step)
        summary = " ".join(f"{k}={v:.4f}" for k, v in final.items()
                           if k.startswith(("knn", "online", "test", "loss", "linear")) and isinstance(v, float))
        print(f"final: {summary} (run dir {run_dir})", flush=True)
    metrics.close()
    dist.shutdown()
    return final


# ---------------------------------------------------------------------- helpers

def _backbone_line(cfg) -> str:
    """resnet18-cifar (a ResNet and its stem), wide_resnet28w2, vit_tiny/4 (its patch size)."""
    b = cfg.backbone
    if b.name.startswith("resnet"):
        return f"{b.name}-{resolve_stem(b.stem, cfg.dataset.size)}"
    from .timm_backbones import FAMILIES, default_patch_size
    if b.name in FAMILIES:
        patch = b.patch_size or default_patch_size(FAMILIES[b.name], cfg.dataset.size)
        name = b.timm_name if b.name == "timm" else b.name
        return name if patch is None else f"{name}/{patch}"
    return b.name


def _views_line(cfg) -> str:
    """'2x32px views' / '2x32px + 6x24px views' for the log's first line."""
    if cfg.dataset.name == "spirograph":
        return f"{sum(g.count for g in cfg.augment.groups)}x32px views"
    from .data.views import view_specs
    return " + ".join(f"{s.count}x{s.size}px" for s in view_specs(cfg.augment, cfg.dataset)) + " views"


def _check_finite(pending, step, steps_per_epoch, ckpt_dir) -> None:
    values = torch.stack(pending).float().tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            bad = step - len(values) + i + 1
            raise Diverged(f"loss is {v} at epoch {(bad - 1) // steps_per_epoch} step {bad}: "
                           f"training stopped; the last good checkpoint is kept in {ckpt_dir}. "
                           f"Fix: lower optimizer.lr or lengthen scheduler.warmup_epochs (a "
                           f"contrastive loss: raise loss.temperature), or use precision=fp32")


def _evaluate(cfg, method, probe, train_src, test_src, is_main) -> dict:
    """The end-of-epoch evaluation on the test split, from one pass of features: kNN, the
    online probe's top-1 (`online_test_top1`: what solo-learn's "online linear" is), and the
    method's own test metrics where it has any (the supervised baseline's classifier)."""
    if not is_main and dist.world_size() > 1:
        return {}
    train_f = extract(method.backbone, train_src, normalize=True, limit=cfg.eval.knn_max_train)
    test_h = extract(method.backbone, test_src)
    row = knn_scores(train_f, F.normalize(test_h, dim=1), train_src, test_src, cfg.eval.knn_k,
                     cfg.eval.knn_temperature)
    if probe is not None and test_src.task == "classification":
        row["online_test_top1"] = probe.accuracy(test_h, test_src.labels)
    if hasattr(method, "evaluate"):
        row.update(method.evaluate(test_h, test_src.labels))
    return row


def _linear(cfg, method, train_src, test_src, device) -> dict:
    """eval.linear: the protocol's linear evaluation of the backbone (a copy when the
    protocol fine-tunes), on the run's own training and test splits."""
    import copy
    from .linear_eval import evaluate_encoder, protocol_config
    pcfg = protocol_config(cfg.eval.linear, cfg)
    backbone = copy.deepcopy(method.backbone) if pcfg.finetune else method.backbone
    was_training = backbone.training
    result, _ = evaluate_encoder(backbone, pcfg, train_src, test_src, device)
    method.backbone.train(was_training)
    if result["task"] == "regression":
        return {"linear_r2": result["r2"], "linear_protocol": cfg.eval.linear}
    return {"linear_top1": result["top1"], "linear_top5": result["top5"],
            "linear_protocol": cfg.eval.linear}


def _figures(cfg, run_dir, method, test_src) -> None:
    """curves.png from metrics.jsonl; tsne.png of test embeddings when eval.tsne."""
    from .figures import curves_png, tsne_png
    if (run_dir / "metrics.jsonl").exists():
        curves_png(run_dir)
    if cfg.eval.tsne:
        n = min(cfg.eval.tsne_points, len(test_src))
        feats = extract(method.backbone, test_src, normalize=True, limit=n)
        labels = (test_src.labels[:n] if test_src.task == "classification"
                  else test_src.targets[:n, 0])          # Spirograph: coloured by m
        tsne_png(feats.cpu(), labels.cpu(), run_dir / "tsne.png", classes=test_src.classes)


def _progress(cfg, is_main, epoch, start, total):
    if not (progress_enabled(cfg.progress) and is_main):
        return None
    from tqdm import tqdm
    # counted in images, so the bar's rate reads as images/s (global batch)
    b = cfg.batch_size
    return tqdm(total=total * b, initial=start * b, desc=f"epoch {epoch}", unit="img",
                unit_scale=True, leave=False, dynamic_ncols=True)
