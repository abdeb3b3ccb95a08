"""Which code made a result: the git commit of this checkout and whether its tracked files
had changes (the invariance-by-gradient reproduction's --git flag), kept in checkpoints,
done.json and linear_eval.json."""
import functools
import subprocess
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> Dict[str, Optional[object]]:
    """{"commit": sha or None, "dirty": bool or None}; None outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
