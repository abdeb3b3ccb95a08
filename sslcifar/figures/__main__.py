"""`python -m sslcifar.figures tsne|curves`: the figures of a saved encoder or run
(the command-line layer).

    python -m sslcifar.figures tsne pretrained=outputs/simclr/<date>_<time>
    python -m sslcifar.figures curves outputs/simclr/<date>_<time>
"""
import sys
from typing import List, Optional

from . import curves_png

USAGE = ("usage: python -m sslcifar.figures tsne [pretrained=PATH dataset=... key=value ...]\n"
         "       python -m sslcifar.figures curves RUN_DIR [OUT.png]")


def main(argv: Optional[List[str]] = None) -> None:
    from ..cli import report_user_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("tsne", "curves"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] == "curves":
        if len(argv) not in (2, 3):
            print(USAGE, file=sys.stderr)
            sys.exit(2)
        out = report_user_errors(curves_png)(*argv[1:])
        print(f"curves: {out}", flush=True)
        return
    from ..cli import evaluate
    sys.argv = [sys.argv[0], *argv[1:]]          # Hydra reads the overrides from sys.argv
    evaluate("tsne")


if __name__ == "__main__":
    main()
