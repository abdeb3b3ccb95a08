"""Where the config tree is: the one function every module asks.

In a checkout (and an editable install) it is the repository's `conf/`; a regular install
(`pip install .`) ships the same files inside the package as `sslcifar/conf/` (setup.cfg's
package_dir maps them there), so the commands work from any directory either way.
"""
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The folder holding simclr.yaml, moco.yaml, linear_eval.yaml and the groups."""
    installed = PACKAGE / "conf"
    if (installed / "simclr.yaml").is_file():
        return installed
    checkout = PACKAGE.parent / "conf"
    if (checkout / "simclr.yaml").is_file():
        return checkout
    raise FileNotFoundError(f"no config tree in {installed} or {checkout}: a broken install "
                            f"(reinstall sslcifar)")
