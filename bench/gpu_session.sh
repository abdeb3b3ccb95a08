#!/usr/bin/env bash
# Every GPU figure of the README's Throughput section in ONE command of at most 8 minutes on
# one GPU with PyTorch installed (made for the device machines lent to some sessions: no
# internet; prepare .gpu/ with bench/gpu_carry.sh first):
#   bash bench/gpu_session.sh [OUT_DIR]
# It records (each step under its own timeout, so the whole stays inside the budget):
#   1. throughput at width 64, batch 256: bf16; bf16 + channels_last; data in host memory;
#      augmentation compiled (about 1.5 min);
#   2. time to accuracy: SimCLR, ResNet-18, batch 512, full CIFAR-10, as many epochs as fit
#      in TTA_SECONDS (200 s; the run is stopped by SIGUSR2, which saves and ends it), kNN
#      every 2 epochs, then tta.png (bench/tta_plot.py) beside the published races;
#   3. the CUDA paths those runs do not reach, a few steps each (bench/gpu_paths.sh: nvJPEG
#      decoding, fp16 with the grad scaler, DINO and MAE on a ViT, MoCo, linear evaluation);
#   4. bench/stream.py on the GPU: a streamed JPEG folder at 224 px, ours against torchvision
#      (and DALI's rows where DALI is installed: its wheels are too large to carry), GPU memory;
#   5. 40 steps with compile=true, and 40 with compile_mode=reduce-overhead (CUDA graphs),
#      each started only while the session is under DEADLINE (480 s) so the whole ends in time.
# Writes OUT_DIR/session.log, metrics.jsonl, curves.png and tta.png.
# A CPU smoke test with tiny sizes (a few minutes):
#   DEVICE=cpu WIDTH=8 BATCH=32 STEPS=2 ROUNDS=1 TTA_SECONDS=40 SUBSET=512 bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-outputs/gpu_session}}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} WIDTH=${WIDTH:-64} BATCH=${BATCH:-256} STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-3} DEADLINE=${DEADLINE:-480} TTA_SECONDS=${TTA_SECONDS:-200} SUBSET=${SUBSET:-null}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)

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

section() { echo; echo "=== $* ($(( $(date +%s) - START )) s)"; }

for opts in "" "--channels-last" "--placement host" "--compile-augment"; do
    section "bench/throughput.py --width $WIDTH --batch $BATCH $opts"
    timeout 120 $PY bench/throughput.py --device "$DEVICE" --width "$WIDTH" --batch "$BATCH" \
        --steps "$STEPS" --rounds "$ROUNDS" --data-root "$DATA" --aug-images 4096 $opts
done

RUN=/tmp/sslcifar-tta
section "time to accuracy: simclr.py backbone=resnet18, stopped after $TTA_SECONDS s"
rm -rf "$RUN"
timeout -s USR2 "$TTA_SECONDS" $PY simclr.py backbone=resnet18 backbone.width="$WIDTH" \
    device="$DEVICE" dataset.root="$DATA" dataset.subset="$SUBSET" epochs=60 \
    eval.knn_every=2 progress=false tensorboard=false hydra.run.dir="$RUN"
$PY bench/tta_plot.py "$RUN" "$OUT/tta.png"
cp "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null
$PY -m sslcifar.figures curves "$RUN" "$OUT/curves.png" 2>/dev/null

section "other CUDA paths (bench/gpu_paths.sh)"
START=$START DEADLINE=$(( DEADLINE - 60 )) DATA=$DATA CKPT=$RUN DEVICE=$DEVICE WIDTH=$WIDTH \
    PYTHON=$PY bash bench/gpu_paths.sh

if [ $(( $(date +%s) - START )) -lt $(( DEADLINE - 150 )) ]; then     # its 150 s fit
    # the streamed JPEG folder at 224 px: ours (colour ops on the GPU) and torchvision, and
    # DALI (nvJPEG ROI decode) where the machine has it; images/s and GPU memory
    DALI_ROWS=$($PY -c "import nvidia.dali" 2>/dev/null && echo --dali)
    section "bench/stream.py --device $DEVICE $DALI_ROWS (224 px)"
    SSLCIFAR_SHARED_DATA=.gpu/data timeout 150 $PY bench/stream.py --device "$DEVICE" \
        --images 4000 --seconds 8 --workers "$(nproc)" --folder /tmp/sslcifar-stream $DALI_ROWS
fi

for mode in default reduce-overhead; do
    if [ $(( $(date +%s) - START )) -ge "$DEADLINE" ]; then echo "SKIP compile $mode (deadline)"; continue; fi
    section "40 steps with compile=true compile_mode=$mode"
    timeout 100 $PY simclr.py backbone=resnet18 backbone.width="$WIDTH" batch_size="$BATCH" \
        device="$DEVICE" dataset.root="$DATA" dataset.subset="$SUBSET" max_steps=40 compile=true \
        compile_mode="$mode" eval.knn_every=0 eval.knn_max_train=1024 progress=false \
        tensorboard=false hydra.run.dir="$RUN-compile-$mode" 2>&1 | tail -15
done
section "done"
