"""Resuming a run: the config must be the one the checkpoint was trained with; and the
signals (SLURM preemption, time limit) that make a run stop to be resumed.

`python simclr.py hydra.run.dir=RUN resume=true` composes the config again from the
command line. Without the first run's overrides it would silently continue another
experiment (other data, schedule or temperature) in the same folder. So the composed
config is compared with the one saved in the checkpoint; only the keys below may
differ. On a mismatch the run stops with one line listing the overrides to add, and the
run's `.hydra/config.yaml` and `overrides.yaml`, which Hydra has already rewritten for
this attempt, are put back as the checkpoint recorded them.
"""
from pathlib import Path
from typing import Dict, List, Optional

from .errors import UserError

# how the run is watched, where its files are, how long it goes on this time: may change
MAY_DIFFER = {"resume", "run_dir", "max_steps", "progress", "log_every", "tensorboard",
              "wandb", "wandb_project", "wandb_entity", "wandb_name",
              "checkpoint_every", "device", "compile", "compile_mode", "augment.compile", "dataset.root", "dataset.download",
              "dataset.num_workers", "dataset.placement", "eval.knn_every", "eval.tsne",
              "eval.tsne_points", "eval.linear"}
# the remedies for a diverged run (continue from its last good checkpoint with a lower
# learning rate, or in fp32): may change, with a warning in the log
MAY_DIFFER_WITH_WARNING = {"optimizer.lr", "precision"}


def flatten(d: dict, prefix: str = "") -> Dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _override(key: str, value) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, list):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


def check_same_config(saved: dict, current: dict, run_dir: Path,
                      overrides: Optional[List[str]], put_back: bool = True) -> List[str]:
    """Raise UserError naming every key whose value differs from the checkpoint's; return
    the warnings for the keys of MAY_DIFFER_WITH_WARNING that do. Keys that the checkpoint
    does not have (options added since) are not compared."""
    now, then = flatten(current), flatten(saved)
    changed = sorted(k for k in then if k in now and k not in MAY_DIFFER and now[k] != then[k])
    differ = [k for k in changed if k not in MAY_DIFFER_WITH_WARNING]
    if not differ:
        return [f"resuming with {k}={now[k]} (the checkpoint trained with {then[k]})"
                for k in changed]
    if put_back:
        _put_back_hydra_record(run_dir, saved, overrides)
    shown = ", ".join(f"{k} ({now[k]!r} here, {then[k]!r} in the checkpoint)" for k in differ[:6])
    more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
    fix = " ".join(_override(k, then[k]) for k in differ)
    raise UserError(f"resume=true with a config that differs from the checkpoint's: {shown}{more}. "
                    f"Fix: resume with the run's own overrides (see {run_dir}/.hydra/overrides.yaml),"
                    f" e.g. add {fix}")


def _put_back_hydra_record(run_dir: Path, saved: dict, overrides: Optional[List[str]]) -> None:
    hydra_dir = Path(run_dir) / ".hydra"
    if not hydra_dir.is_dir():
        return
    import yaml
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    if overrides is not None:       # checkpoints of older versions did not keep them
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))


def current_overrides() -> List[str]:
    """The command-line overrides of this run (kept in checkpoints for the above)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def requeued() -> int:
    """How often SLURM has started this job again after a preemption, time limit or
    requeue (0: its first run). A requeued job resumes by itself."""
    import os
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


class EvaluationInterrupted(Exception):
    """A stop signal arrived while the run was evaluating (kNN, linear probe, figures)."""


class StopRequest:
    """The signals that stop a run: SIGUSR2/SIGTERM (SLURM's warning before a time limit or
    preemption) and SIGINT (Ctrl-C). The loop saves a checkpoint at the next step and
    exits (for requeue; exit 130 after Ctrl-C). A signal that arrives while the run
    evaluates (`with stop.evaluation():`) interrupts the evaluation at once, and a second
    Ctrl-C aborts at once (KeyboardInterrupt), saving nothing more."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.previous = {}
        self._evaluating = False

    def install(self) -> None:
        import signal
        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:          # not the main thread: leave signals alone
                pass

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C (not by the cluster)."""
        import signal
        return self.signum == signal.SIGINT

    def _handle(self, signum, frame):
        import signal
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt          # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum
        if self._evaluating:
            raise EvaluationInterrupted()

    def evaluation(self, interruptible: bool = True):
        """A block during which a stop signal interrupts at once (EvaluationInterrupted)
        instead of waiting for the next step. With several processes keep it off
        (interruptible=False): the ranks must stop together, at a step they agree on."""
        from contextlib import contextmanager

        @contextmanager
        def block():
            if interruptible and self.signum is not None:
                raise EvaluationInterrupted()
            self._evaluating = interruptible
            try:
                yield
            finally:
                self._evaluating = False
        return block()

    def forward_to_previous(self) -> None:
        """Hand the signal to whoever listened before us (submitit requeues the job);
        not Ctrl-C's, whose default handler would raise KeyboardInterrupt."""
        import signal
        prev = self.previous.get(self.signum)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if callable(prev) and self.signum != signal.SIGINT:
            prev(self.signum, None)
