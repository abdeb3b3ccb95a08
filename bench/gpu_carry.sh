#!/usr/bin/env bash
# Pack what a bare GPU machine without internet needs for bench/gpu_session.sh into .gpu/
# (git-ignored): pure-Python wheels of the dependencies its image lacks (Hydra, OmegaConf,
# ANTLR runtime, submitit; for Python 3.12), and the shared CIFAR-10 archive with its
# builder. About 20 MB. Run it here, where PyPI is reachable:
#   bash bench/gpu_carry.sh [PATH_TO_SHARED_DATA]
# then, with the device tool: run(command="bash bench/gpu_session.sh", carry=[".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${SSLCIFAR_SHARED_DATA:-../shared/data}}
PYVER=${GPU_PYTHON_VERSION:-3.12}
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl \
    hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 hydra-submitit-launcher==1.2.0
# the ANTLR runtime Hydra pins (4.9.3) exists on PyPI only as an sdist: build its wheel here
python3 -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3
cp "$DATA/cifar10-jpeg.tar.gz" "$DATA/make_cifar10.py" .gpu/data/
du -sh .gpu
ls .gpu/whl
