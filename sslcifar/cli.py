"""What the top-level scripts share: config registration and error reporting."""
import functools
import logging
import sys

from .config import register_configs
from .errors import UserError

register_configs()


def report_user_errors(fn):
    """Check the composed config's keys, then run; turn a UserError into one line on
    stderr and exit status 2 (no traceback). Anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        try:
            from .validate import check_known_keys
            check_known_keys(cfg)
            return fn(cfg, *args, **kwargs)
        except UserError as e:
            logging.getLogger("sslcifar").debug("user error", exc_info=True)
            print(f"error: {e}", file=sys.stderr, flush=True)
            _leave_in_run_dir(f"error: {e}\n")
            import os
            if "SUBMITIT_EXECUTOR" in os.environ:
                # inside a submitit job: an exit writes no result file, and a launcher on a
                # cluster without sacct would wait for it forever. Raise: submitit records it.
                raise
            sys.exit(2)
    return wrapper


def _leave_in_run_dir(message: str) -> None:
    """Keep the error next to the run's outputs (error.txt), where `sslcifar.report`
    and a user browsing a sweep find it."""
    from hydra.core.hydra_config import HydraConfig
    try:
        if HydraConfig.initialized():
            from pathlib import Path
            out = Path(HydraConfig.get().runtime.output_dir)
            if out.is_dir():
                (out / "error.txt").write_text(message)
    except OSError:
        pass


def pin_torchrun_run_dir() -> None:
    """torchrun starts one process per GPU and each would resolve ${now} itself,
    possibly a second apart: all ranks must share one run directory. Unless the
    user named one, use the rendezvous id that torchrun gives every rank."""
    import os
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or run_id == "none" \
            or any(a.startswith(("hydra.run.dir=", "-m", "--multirun")) for a in sys.argv[1:]):
        return
    sys.argv.append(f"hydra.run.dir=outputs/${{hydra:job.config_name}}/torchrun_{run_id}")
