"""The bench scripts still run against the code they measure (they are not timed here: the
figures come from running them by hand). bench/throughput.py once called the loop's step
with the signature it had before the spine (#26); this catches such a drift."""
import re

from .conftest import run


def test_throughput_bench_runs_and_prints_its_ratios():
    proc = run("bench/throughput.py", "--device", "cpu", "--width", "4", "--batch", "16",
               "--steps", "1", "--rounds", "1", "--images", "64", "--aug-images", "64",
               "--workers", "0", timeout=600)
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"overhead device=[\d.]+ torchvision=[\d.]+ aug_speedup=[\d.]+", last), \
        proc.stdout[-2000:]
