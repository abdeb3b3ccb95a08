"""The bench scripts still run against the code they measure (they are not timed here: the
figures come from running them by hand). bench/throughput.py once called the loop's step
with the signature it had before the spine (#26); this catches such a drift."""
import importlib.util
import re

from .conftest import needs_real_cifar, run


def test_throughput_bench_runs_and_prints_its_ratios():
    proc = run("bench/throughput.py", "--device", "cpu", "--width", "4", "--batch", "16",
               "--steps", "1", "--rounds", "1", "--images", "64", "--aug-images", "64",
               "--workers", "0", timeout=600)
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"overhead device=[\d.]+ torchvision=[\d.]+ aug_speedup=[\d.]+", last), \
        proc.stdout[-2000:]


@needs_real_cifar
def test_stream_bench_runs_every_row_and_prints_its_ratios(tmp_path):
    """bench/stream.py on a few real JPEGs (the workplace's CIFAR-10 upscaled), DALI's rows
    included where DALI is installed: the stream pipeline's and DALI's CPU paths with their
    colour ops in a worker."""
    dali = importlib.util.find_spec("nvidia") is not None and \
        importlib.util.find_spec("nvidia.dali") is not None
    proc = run("bench/stream.py", "--images", "24", "--size", "32", "--batch", "8",
               "--workers", "1", "--seconds", "0.5", "--folder", str(tmp_path / "jpegs"),
               *["--dali"] * dali, timeout=600)
    rows = re.findall(r"^  (\S+) +[\d.]+ images/s", proc.stdout, re.M)
    assert rows == ["torchvision", "ours", "ours-workers"] + ["dali", "dali-own"] * dali, \
        proc.stdout[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"stream_speedup=[\d.]+ workers_only=[\d.]+"
                        + r" dali=[\d.]+ dali_own=[\d.]+" * dali, last), proc.stdout[-2000:]
