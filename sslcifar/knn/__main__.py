"""`python -m sslcifar.knn`: the kNN evaluation of a saved encoder (the command-line layer).

    python -m sslcifar.knn pretrained=outputs/simclr/<date>_<time> [k=200 temperature=0.1]
"""


def main() -> None:
    """python -m sslcifar.knn pretrained=PATH [dataset=... backbone=... k=200 temperature=0.1]"""
    from ..cli import evaluate
    evaluate("knn")


if __name__ == "__main__":
    main()
