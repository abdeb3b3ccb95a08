"""`python -m sslcifar COMMAND [key=value ...]`: the suite's commands, from a checkout or an
installed package (`pip install .` ships the configs inside the package).

    python -m sslcifar simclr experiment=demo          # as `python simclr.py experiment=demo`
    python -m sslcifar moco moco_k=4096                # as `python moco.py moco_k=4096`
    python -m sslcifar linear_eval pretrained=RUN      # as `python linear_eval.py pretrained=RUN`
    python -m sslcifar knn pretrained=RUN              # as `python -m sslcifar.knn pretrained=RUN`
    python -m sslcifar tsne pretrained=RUN             # as `python -m sslcifar.figures tsne ...`
    python -m sslcifar report SWEEP_DIR                # as `python -m sslcifar.report SWEEP_DIR`
"""
import sys

COMMANDS = ("simclr", "moco", "linear_eval", "knn", "tsne", "report")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)                    # Hydra reads the overrides from sys.argv
    if command == "report":
        from .report import main as report
        report(sys.argv[1:])
        return
    from .cli import evaluate, pretrain
    (pretrain if command in ("simclr", "moco") else evaluate)(command)


if __name__ == "__main__":
    main()
