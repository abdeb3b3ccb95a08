"""The one training loop: every method, every data set, one or many processes.

    python simclr.py backbone=resnet18                       # 1 process (GPU if any)
    python simclr.py dataset=spirograph backbone.width=16    # no download needed
    python moco.py backbone=resnet18 batch_size=256 moco_k=4096 moco_t=0.2
    torchrun --nproc_per_node=4 simclr.py batch_size=1024    # 4 GPUs, global batch 1024

`train(cfg)` reads as sections: run directory, device and processes, data,
model, optimisation, resume, loop, final evaluation. Distributed training,
mixed precision and checkpointing sit behind small helpers that are no-ops
on one CPU process. What a method needs from the loop goes through its hooks
(`sslcifar.methods.base.Method`): parameter groups, before each step, after backward,
after the optimizer step.
"""
import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist
from .config import as_dict
from .data.loader import build_batches
from .data.sources import build_source
from .errors import UserError
from .knn import knn_evaluate
from .methods import build_method
from .metrics import MetricsLog, WandbRun, epoch_row, new_meters
from .models import resolve_stem
from .optim import build_optimizer, scaled_lr
from .probe import OnlineProbe
from .resume import StopRequest, check_same_config, current_overrides, requeued
from .schedule import lr_schedule, warmup_cosine
from .validate import check_disk_space, check_writable, validate_config, validate_data
from .version import code_version

log = logging.getLogger("sslcifar")

DONE = "done.json"
STOPPED = "stopped.json"      # a run that ended at max_steps before its last epoch


class Diverged(UserError):
    """The loss became NaN or infinite."""


def default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UserError("no run directory: set run_dir=PATH (or launch through simclr.py/moco.py)")


def train(cfg) -> Dict[str, float]:
    # ------------------------------------------------------------------ run directory
    validate_config(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    ckpt_dir = run_dir / "checkpoints"
    done_file = run_dir / DONE
    if done_file.exists() and (cfg.resume or requeued()):
        log.info("%s: this run already finished; not running it again", run_dir)
        return json.loads(done_file.read_text())

    # ------------------------------------------------------------------ device and processes
    device = dist.pick_device(cfg.device)
    dist.init_from_env(device.type)
    rank, world = dist.rank(), dist.world_size()
    is_main = rank == 0
    if is_main:
        check_writable(run_dir)
        (run_dir / STOPPED).unlink(missing_ok=True)
    amp_dtype = dist.autocast_dtype(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ------------------------------------------------------------------ data
    train_src = build_source(cfg, "train", device, augment=True)
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
    step_fn = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model

    # ------------------------------------------------------------------ optimisation
    o = cfg.optimizer
    base_lr = scaled_lr(o.lr, cfg.batch_size, o.lr_scaling)
    groups = method.param_groups()
    for g in groups:            # a group that sets its own weight decay keeps it
        g["wd_schedule"] = "weight_decay" not in g
    optimizer = build_optimizer(groups, o.name, base_lr, o.weight_decay, momentum=o.momentum,
                                nesterov=o.nesterov, betas=tuple(o.betas),
                                trust_coefficient=o.trust_coefficient,
                                lars_variant=o.lars_variant, clip_lr=o.clip_lr)
    if is_main:
        check_disk_space(run_dir, ckpt.estimated_bytes(method, probe, o.name))
    warmup = round(cfg.scheduler.warmup_epochs * steps_per_epoch)
    final_lr = cfg.scheduler.final_lr if cfg.scheduler.name == "cosine" else base_lr
    lrs = lr_schedule(base_lr, total_steps, warmup, final_lr,
                      "cosine" if cfg.scheduler.name == "cosine" else "constant",
                      cfg.scheduler.warmup_start_lr).tolist()
    wds = None
    if cfg.scheduler.final_weight_decay is not None:
        wds = warmup_cosine(o.weight_decay, cfg.scheduler.final_weight_decay, total_steps).tolist()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())

    # ------------------------------------------------------------------ resume
    wandb_run = None
    if cfg.wandb and is_main:
        wandb_run = WandbRun(run_dir, {**as_dict(cfg), "overrides": current_overrides(),
                                       "code": code_version()},
                             cfg.wandb_project, cfg.wandb_entity, cfg.wandb_name)
    metrics = MetricsLog(run_dir, cfg.tensorboard, enabled=is_main, wandb=wandb_run)
    step, meters = 0, new_meters(device)
    if cfg.resume or requeued():
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
            step = ckpt.restore(state, method, optimizer, scaler, probe, metrics, meters)
            if is_main:     # under SLURM every task writes to the same log file
                log.info("resumed from %s at step %d (epoch %d)%s", path, step,
                         step // steps_per_epoch,
                         f" after SLURM requeue #{requeued()}" if requeued() else "")
        elif requeued():
            log.warning("SLURM requeue #%d, but no checkpoint in %s yet: starting from step 0",
                        requeued(), ckpt_dir)
    if is_main:
        log.info("%s | %s-%s w%d | %s %d train images, %s | batch %d x %d steps/epoch | "
                 "lr %.4g | %s %s | %d process(es)", cfg.method.name, cfg.backbone.name,
                 resolve_stem(cfg.backbone.stem, cfg.dataset.size), cfg.backbone.width,
                 cfg.dataset.name, len(train_src), _views_line(cfg), cfg.batch_size,
                 steps_per_epoch, base_lr, device, amp_dtype or "fp32", world)

    def snapshot() -> dict:
        return ckpt.training_state(step, step // steps_per_epoch, method, optimizer, scaler,
                                   probe, as_dict(cfg), current_overrides(), metrics.rows, meters)

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
        for batch in batches.epoch(epoch, start):
            for group in optimizer.param_groups:
                group["lr"] = base_lr if group.get("fixed_lr") else lrs[step]
                if wds is not None and group["wd_schedule"]:
                    group["weight_decay"] = wds[step]
            method.before_step(step, total_steps, steps_per_epoch)
            if cfg.channels_last:
                batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
            out = train_step(step_fn, optimizer, scaler, autocast, batch,
                             lambda: method.after_backward(step, steps_per_epoch))
            method.after_step(step, total_steps)
            loss = out["loss"]
            if probe is not None:
                correct, labelled = probe.step(out["features"], batch.labels)
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
                metrics.scalars({"train/loss": pending[-1].item(), "train/lr": lrs[step - 1]}, step)
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
            row = epoch_row(epoch, step, meters, lrs[step - 1], cfg.batch_size * steps_done / elapsed,
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
                meters = new_meters(device)
            save()
            if is_main and epoch_end and cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0:
                ckpt.atomic_save(snapshot(), ckpt_dir / f"epoch_{epoch + 1}.pt")

    # ------------------------------------------------------------------ final
    if is_main and cfg.eval.linear and metrics.rows:
        # the post-pretraining linear evaluation: into the last row and done.json
        linear = _linear(cfg, method, train_src, test_src, device)
        metrics.rows[-1].update(linear)
        metrics.restore(metrics.rows)
        metrics.scalars({f"epoch/{k}": v for k, v in linear.items() if isinstance(v, float)}, step)
        log.info("linear evaluation (%s): %s", cfg.eval.linear,
                 " ".join(f"{k}={v:.4g}" for k, v in linear.items() if isinstance(v, float)))
    final = {k: v for k, v in metrics.rows[-1].items()} if metrics.rows else {"step": step}
    final["finished"] = step >= total_steps
    if is_main:
        final["code"] = code_version()
        if step >= total_steps:
            done_file.write_text(json.dumps(final))
        else:       # max_steps: the report shows it stopped, not running; resume continues
            (run_dir / STOPPED).write_text(json.dumps({"step": step, "reason": "max_steps"}))
        _figures(cfg, run_dir, method, test_src)
        for name in ("curves", "tsne"):
            metrics.image(name, run_dir / f"{name}.png", step)
        summary = " ".join(f"{k}={v:.4f}" for k, v in final.items()
                           if k.startswith(("knn", "online", "test", "loss", "linear")) and isinstance(v, float))
        print(f"final: {summary} (run dir {run_dir})", flush=True)
    metrics.close()
    dist.shutdown()
    return final


# ---------------------------------------------------------------------- helpers of the loop

def train_step(model, optimizer, scaler, autocast, batch, after_backward=None) -> dict:
    """Forward under autocast, backward (loss-scaled for fp16), the method's after-backward
    hook on unscaled gradients, optimizer step. No host-device synchronisation: the loss
    stays a device tensor."""
    with autocast:
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    if after_backward is not None:
        if scaler.is_enabled():
            scaler.unscale_(optimizer)      # clipping must see the true gradients
        after_backward()
    scaler.step(optimizer)
    scaler.update()
    return out


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
    from .features import extract
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
    if not (cfg.progress and is_main):
        return None
    from tqdm import tqdm
    # counted in images, so the bar's rate reads as images/s (global batch)
    b = cfg.batch_size
    return tqdm(total=total * b, initial=start * b, desc=f"epoch {epoch}", unit="img",
                unit_scale=True, leave=False, dynamic_ncols=True)
