#!/usr/bin/env bash
# Every GPU figure of the README's Throughput section in one command, on a CUDA machine
# with PyTorch installed (made for the device machines lent to some sessions: 10 minutes
# a command, no internet; prepare .gpu/ with bench/gpu_carry.sh first).
#   bash bench/gpu_session.sh [OUT_DIR]
# Writes OUT_DIR/session.log (all output) and the short run's metrics.jsonl and curves.png.
# Sizes can be lowered for a CPU smoke test:
#   DEVICE=cpu WIDTH=8 BATCH=32 STEPS=2 ROUNDS=1 EPOCHS=1 SUBSET=512 bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-outputs/gpu_session}}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} WIDTH=${WIDTH:-64} BATCH=${BATCH:-256} STEPS=${STEPS:-20}
ROUNDS=${ROUNDS:-5} EPOCHS=${EPOCHS:-15} SUBSET=${SUBSET:-null}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if ls .gpu/whl/*.whl >/dev/null 2>&1; then        # dependencies the machine's image lacks
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/sslcifar-site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=$PYTHONPATH:/tmp/sslcifar-site
fi
DATA=${SSLCIFAR_CIFAR:-/tmp/sslcifar-cifar}
if [ ! -d "$DATA/cifar-10-batches-py" ]; then
    $PY .gpu/data/make_cifar10.py "$DATA" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())"

section() { echo; echo "=== $* ($(date +%T))"; }

section "unit tests of the data path and losses (CPU, this machine's torch)"
$PY -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_losses.py 2>&1 | tail -3

for opts in "" "--channels-last" "--precision fp32" "--placement host"; do
    section "bench/throughput.py --width $WIDTH --batch $BATCH $opts"
    timeout 300 $PY bench/throughput.py --device "$DEVICE" --width "$WIDTH" --batch "$BATCH" \
        --steps "$STEPS" --rounds "$ROUNDS" --data-root "$DATA" $opts
done

RUN=/tmp/sslcifar-gpu-run
section "short real CIFAR-10 run: simclr.py backbone=resnet18 epochs=$EPOCHS (bf16 on CUDA)"
rm -rf "$RUN"
time timeout 420 $PY simclr.py backbone=resnet18 backbone.width="$WIDTH" \
    device="$DEVICE" dataset.root="$DATA" dataset.subset="$SUBSET" epochs="$EPOCHS" \
    eval.knn_every=5 progress=false tensorboard=false hydra.run.dir="$RUN"
cp "$RUN/metrics.jsonl" "$RUN/curves.png" "$OUT/" 2>/dev/null

section "the same for 50 steps with compile=true"
timeout 300 $PY simclr.py backbone=resnet18 backbone.width="$WIDTH" device="$DEVICE" \
    dataset.root="$DATA" dataset.subset="$SUBSET" max_steps=50 compile=true eval.knn_every=0 \
    progress=false tensorboard=false hydra.run.dir="$RUN-compile" 2>&1 | tail -4
section "done"
