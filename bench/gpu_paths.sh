#!/usr/bin/env bash
# The CUDA code paths that bench/gpu_session.sh's throughput and time-to-accuracy runs do not
# reach, each as a few steps through the real entry points (a crash, a dtype error under
# autocast or a missing kernel shows here): nvJPEG decoding of a streamed JPEG folder,
# fp16 with the grad scaler, a ViT with multi-crop (DINO) and MAE through timm, MoCo's queue,
# and both linear-evaluation recipes on a checkpoint. Called at the end of gpu_session.sh;
# stops starting new checks once DEADLINE (seconds of the session, from START) has passed.
#   DATA=DIR_WITH_cifar-10-batches-py_AND_cifar10-jpeg [CKPT=RUN_DIR] bash bench/gpu_paths.sh
# A CPU smoke test: DEVICE=cpu WIDTH=8 DATA=~/.cache/cifar10 bash bench/gpu_paths.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} WIDTH=${WIDTH:-64} DATA=${DATA:?set DATA} CKPT=${CKPT:-}
START=${START:-$(date +%s)} DEADLINE=${DEADLINE:-100000}
export PYTHONUNBUFFERED=1
COMMON="device=$DEVICE dataset.root=$DATA max_steps=10 eval.knn_every=0 eval.knn_max_train=1024
progress=false tensorboard=false"

check() {       # check NAME COMMAND...: one line of verdict, the last lines of output on failure
    local name=$1; shift
    local now=$(( $(date +%s) - START ))
    if [ "$now" -ge "$DEADLINE" ]; then echo "SKIP $name (deadline, ${now} s)"; return; fi
    local t0=$(date +%s) log=/tmp/sslcifar-path-$name.log
    timeout 90 "$@" >"$log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        echo "OK   $name ($(( $(date +%s) - t0 )) s): $(grep -E '^final:|top1|R2' "$log" | tail -1)"
    else
        echo "FAIL $name (rc $rc, $(( $(date +%s) - t0 )) s):"; tail -15 "$log"
    fi
}

check decode_cuda $PY simclr.py $COMMON backbone.width="$WIDTH" dataset=imagefolder \
    dataset.root="$DATA/cifar10-jpeg" dataset.pipeline=stream dataset.decode=cuda \
    hydra.run.dir=/tmp/sslcifar-path-decode
check fp16 $PY simclr.py $COMMON backbone.width="$WIDTH" precision=fp16 \
    hydra.run.dir=/tmp/sslcifar-path-fp16
check dino_vit_multicrop $PY simclr.py experiment=dino_vit_tiny_cifar10 $COMMON batch_size=128 augment.small_crops=6 \
    hydra.run.dir=/tmp/sslcifar-path-dino
check mae_vit $PY simclr.py experiment=mae_vit_tiny_cifar10 $COMMON batch_size=128 \
    hydra.run.dir=/tmp/sslcifar-path-mae
check moco $PY moco.py $COMMON backbone=resnet18 backbone.width="$WIDTH" \
    hydra.run.dir=/tmp/sslcifar-path-moco
if [ -n "$CKPT" ]; then
    check linear_fast $PY linear_eval.py pretrained="$CKPT" device="$DEVICE" dataset.root="$DATA" \
        recipe=fast progress=false hydra.run.dir=/tmp/sslcifar-path-linfast
    check linear_standard $PY linear_eval.py pretrained="$CKPT" device="$DEVICE" \
        dataset.root="$DATA" max_steps=100 progress=false hydra.run.dir=/tmp/sslcifar-path-linstd
fi
