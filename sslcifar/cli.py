"""What the top-level scripts share: config registration and error reporting."""
import functools
import logging
import sys

from .config import register_configs
from .errors import UserError

register_configs()


def report_user_errors(fn):
    """Turn a UserError into one line on stderr and exit status 2 (no traceback).
    Anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            logging.getLogger("sslcifar").debug("user error", exc_info=True)
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
    return wrapper
