#!/usr/bin/env bash
# Reproduce the paper's CIFAR-10 sigma = 0.25 rows with dsmooth commands only (issue #9).
# Every step resumes where it stopped: rerun this script after any interruption.
#   RUNS   where checkpoints go (keep it outside a fresh work tree; default ~/dsmooth-runs)
#   DATA   the CIFAR-10 npz folder (default ../shared/data/cifar10 beside the repo)
#   EPOCHS classifier epochs (default 30, cosine; the paper used 90 with steps)
# Budget measured on the 2-core AVX2 development machine (fp32): ResNet-110 training
# ~20-40 img/s (25-40 min per epoch), DnCNN MSE ~10-25 img/s, Stab ~7-15 img/s,
# certification DnCNN-17 + ResNet-110 ~25-70 samples/s, i.e. 20-55 h per 500-image log at
# n = 10,000. On the AVX512-BF16 EPYC (bf16 native, picked by --precision auto): ResNet-110
# ~150 img/s (5-6 min per epoch), certification ~175 samples/s (~8 h per log). A machine
# with AMX bf16 or a GPU is 10-100x faster (docs/engine.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DS=${DS:-.venv/bin/dsmooth}
RUNS=${RUNS:-$HOME/dsmooth-runs}
DATA=${DATA:-../shared/data/cifar10}
EPOCHS=${EPOCHS:-30}
SIGMA=0.25
TRAIN=("$DATA/cifar10_train_part1.npz" "$DATA/cifar10_train_part2.npz")
TEST="$DATA/cifar10_test.npz"
mkdir -p "$RUNS" results/cifar10

resume() { [ -f "$1/train_state.safetensors" ] && echo --resume || true; }
done_training() { python3 -c "import json,sys; c=json.load(open('$1/config.json')); sys.exit(0 if c.get('epochs',0) >= $2 else 1)" 2>/dev/null; }

# 1. The "pretrained" classifier: ResNet-110, no noise.
C="$RUNS/cifar10-resnet110"
done_training "$C" "$EPOCHS" || $DS train-classifier --arch cifar_resnet110 --data "${TRAIN[@]}" \
  --val-data "$TEST" --max-val-images 2000 --epochs "$EPOCHS" --batch 128 --lr 0.1 \
  --schedule cosine --warmup-epochs 1 --weight-decay 1e-4 --nesterov --out "$C" \
  --save-every-minutes 10 $(resume "$C")

# 2. DnCNN denoisers at sigma = 0.25: MSE, then Stab fine-tuned from MSE (Stab+MSE).
M="$RUNS/cifar10-dncnn-mse-$SIGMA"
done_training "$M" 3 || $DS train-denoiser --objective mse --sigma $SIGMA --arch dncnn \
  --classifier "$C" --data "${TRAIN[@]}" --val-data "$TEST" --max-val-images 500 \
  --epochs 3 --batch 64 --lr 1e-3 --schedule cosine --out "$M" --save-every-minutes 10 \
  $(resume "$M")
S="$RUNS/cifar10-dncnn-stab-$SIGMA"
done_training "$S" 3 || $DS train-denoiser --objective stab --sigma $SIGMA --init "$M" \
  --classifier "$C" --data "${TRAIN[@]}" --val-data "$TEST" --max-val-images 500 \
  --epochs 3 --batch 64 --lr 1e-5 --schedule cosine --out "$S" --save-every-minutes 10 \
  $(resume "$S")

# 3. Certify with the paper's protocol: every 20th test image, n0 = 100, n = 10,000.
certify() {  # name, extra flags
  $DS certify --data "$TEST" --classifier "$C" --sigma $SIGMA --skip 20 --n0 100 \
    --n 10000 --alpha 0.001 --out "results/cifar10/$1.tsv" "${@:2}"
}
certify no_denoiser
certify dncnn_mse --denoiser "$M"
certify dncnn_stab --denoiser "$S"

# 4. The table and the curves.
$DS analyze --radii 0 0.25 0.5 0.75 --plot results/cifar10/curves.png \
  --label "no denoiser=results/cifar10/no_denoiser.tsv" \
  --label "MSE DnCNN=results/cifar10/dncnn_mse.tsv" \
  --label "Stab DnCNN=results/cifar10/dncnn_stab.tsv" | tee results/cifar10/table.md
