"""The command-line layer: what every command shares (simclr.py, moco.py, linear_eval.py,
`python -m sslcifar.knn`, `python -m sslcifar.figures tsne`, and `python -m sslcifar CMD` of
an installed package): config registration, the original repositories' names, one
composition of the command line before Hydra's (one-line errors, ranges checked, nothing
written), and error reporting."""
import functools
import logging
import sys

from .config import MOCO_ALIASES, register_configs
from .errors import UserError
from .paths import config_dir

register_configs()


def run_command(config_name: str, task, aliases=None, pin_run_dir: bool = False) -> None:
    """Run `task(cfg)` as the command of conf/<config_name>.yaml: the original names of
    `aliases` renamed, the command line checked, then Hydra (run directory, logging,
    multirun, launchers) calls the task with the composed config."""
    import hydra
    if aliases:
        rename_aliases(aliases)
    check_overrides(config_name)
    if pin_run_dir:
        pin_torchrun_run_dir()

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    @report_user_errors
    def main(cfg):
        return task(cfg)
    if not any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        main()
        return
    # a sweep: Hydra would print a traceback for a job that failed (launchers re-raise its
    # error here); say which error it was and where the whole sweep's status is
    import os
    import time
    os.environ["HYDRA_FULL_ERROR"] = "1"
    started = time.time()
    try:
        main()
    except Exception as e:          # noqa: BLE001 -- a job's error, of any type
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, UserError):
            line = f"{type(e).__name__}: {line}"
        print(f"error: a job of the sweep failed: {line}. Fix: see that job's folder; every "
              f"job's status: python -m sslcifar.report {_sweep_dir(config_name, started)}",
              file=sys.stderr, flush=True)
        sys.exit(1)


def _sweep_dir(config_name: str, since: float) -> str:
    """The sweep's folder: hydra.sweep.dir from the command line, else the newest folder
    Hydra made under outputs/multirun/<command>/ since the launch."""
    from pathlib import Path
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.sweep.dir=")]
    if given:
        return given[-1]
    made = [d for d in (Path("outputs") / "multirun" / config_name).glob("*")
            if d.is_dir() and d.stat().st_mtime >= since - 1]
    return str(max(made, key=lambda d: d.stat().st_mtime)) if made else \
        f"outputs/multirun/{config_name}/<date>_<time>"


def pretrain(config_name: str) -> None:
    """simclr.py / moco.py: pretraining with conf/<config_name>.yaml (moco.py's original
    names moco_k, moco_t, moco_m renamed first, so they win over any preset)."""
    from .train import train
    run_command(config_name, train, MOCO_ALIASES if config_name == "moco" else None,
                pin_run_dir=True)


def evaluate(config_name: str) -> None:
    """linear_eval.py, `python -m sslcifar.knn`, `python -m sslcifar.figures tsne`: an
    evaluation of a saved encoder with conf/<config_name>.yaml."""
    from .eval_config import register_eval_configs
    register_eval_configs()
    if config_name == "linear_eval":
        from .linear_eval import linear_eval as task
    elif config_name == "knn":
        from .knn import knn_from_config
        task = lambda cfg: knn_from_config(cfg, hydra_run_dir())        # noqa: E731
    elif config_name == "tsne":
        from .figures import tsne_from_config
        task = lambda cfg: tsne_from_config(cfg, hydra_run_dir())       # noqa: E731
    else:
        raise ValueError(f"no evaluation command {config_name!r}")
    run_command(config_name, task)


def hydra_run_dir():
    from pathlib import Path
    from hydra.core.hydra_config import HydraConfig
    return Path(HydraConfig.get().runtime.output_dir)


def report_user_errors(fn):
    """Check the composed config's keys, then run; turn a UserError into one line on
    stderr and exit status 2 (no traceback). Anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        try:
            from omegaconf import DictConfig
            if isinstance(cfg, DictConfig):
                from .config import check_known_keys
                from .ranges import check_ranges
                check_known_keys(cfg)
                check_ranges(cfg)
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
        except KeyboardInterrupt:       # training: the second Ctrl-C (the first saves and stops)
            print("error: interrupted (Ctrl-C): stopped at once; what was saved before is kept",
                  file=sys.stderr, flush=True)
            sys.exit(130)
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


def rename_aliases(aliases: dict, argv=None) -> None:
    """Rewrite an original repository's command-line names in sys.argv into our keys
    (moco.py: moco_k=4096 -> method.queue_size=4096), before Hydra reads them. Being
    command-line overrides, they then win over any preset, as the original names should."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[1:], start=1):
        prefix = arg[:1] if arg[:1] in "+~" else ""
        key, eq, value = arg[len(prefix):].partition("=")
        if key in aliases and (eq or prefix == "~"):
            argv[i] = f"{prefix}{aliases[key]}{eq}{value}"


def check_overrides(config_name: str) -> None:
    """Compose the config once before Hydra does, so that a bad override ends like every
    other user error: one line naming it and the fix, exit status 2. (Hydra's own report
    spans several lines, and for a misspelt key suggests `+key=value`, which would add a
    key that nothing reads.) Command lines with flags (-m, --cfg, --help, ...) are left to
    Hydra as they are."""
    args = sys.argv[1:]
    if any(a.startswith("-") for a in args):
        return
    from hydra import compose, initialize_config_dir
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=args)
    except Exception as e:          # noqa: BLE001 -- Hydra raises several unrelated types
        print(f"error: {composition_error(e, args)}", file=sys.stderr, flush=True)
        sys.exit(2)
    from .ranges import check_ranges
    try:
        check_ranges(cfg)           # before Hydra makes the run directory: nothing written
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def composition_error(e: Exception, args) -> str:
    """One line for an exception of Hydra's compose: what is wrong and the fix."""
    import dataclasses
    import re
    text = str(e)
    missing = re.search(r"Could not find '(.+)/([^/']+)'", text)
    if missing and getattr(e, "options", None):
        return (f"{missing.group(1)}={missing.group(2)} is not an option of {missing.group(1)}. "
                f"Fix: use one of {', '.join(e.options)}")
    cause = e.__cause__
    key = getattr(cause, "full_key", None)
    if key and "not in" in str(cause):
        from .config import unknown_key
        schema = getattr(cause, "object_type", None)
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
        if key.startswith("hydra.launcher."):
            return unknown_key(key, known, "choose the launcher first (hydra/launcher=slurm or "
                                           "local), or check the key")
        return unknown_key(key, known)
    if key:
        given = next((a for a in args if a.lstrip("+~").startswith(f"{key}=")), key)
        return f"{given}: {str(cause).splitlines()[0]}. Fix: give {key} a value of its type"
    inner = re.search(r"^In '([^']+)': ConfigKeyError.*?Key '([^']+)' not in '([^']+)'.*?full_key: (\S+)",
                      text, re.S)
    if inner:       # a preset or config file sets a key the chosen group option lacks
        where, _, schema, full = inner.groups()
        group = full.split(".")[0]
        return (f"{where} sets {full}, which this {group} ({schema}) does not have. Fix: choose "
                f"a {group} that has it, or leave out {where}")
    tilde = next((a for a in args if "=~" in a or "=[~" in a), None)
    if tilde and ("LexerNoViableAlt" in text or "token recognition" in text):
        key, _, value = tilde.partition("=")
        return (f"{tilde}: an unquoted ~ is not expanded here (Hydra reads ~ as a deletion). "
                f"Fix: {key}=$HOME{value[1:]}, or quote it: '{key}=\"{value}\"' (a path's ~ is "
                f"expanded when read)")
    if text.startswith("Ambiguous value"):
        arg = re.search(r"argument '([^']+)'", text)
        return (f"{arg.group(1) if arg else 'an override'} lists several values. Fix: add -m to "
                f"sweep over them, or write a list as key=[a,b]")
    return f"{text.splitlines()[0]}. Fix: check that override (`--cfg job` prints the config)"


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
