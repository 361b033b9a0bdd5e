#!/usr/bin/env bash
# Does MAE pre-training in bf16 autocast give as good an encoder as in float32? Pre-train configs/mae_mnist.yaml
# once in each precision (seed 0), then fine-tune configs/mae_mnist_finetune.yaml (float32, 10% of the labels,
# 720 steps) from each encoder with seeds 0, 1, 2 (label subset seeded alike); only the pre-training's precision
# differs between the two arms of a seed. A third arm fine-tunes in bf16 too (the whole pipeline in bf16).
#   bash scripts/mae_precision_study.sh [OUT=runs/mae_precision]
# Runs one after another; writes $OUT/log.tsv and results/studies/mae_mnist_precision.json.
set -euo pipefail
DEFAULT_OUT=runs/mae_precision
source "$(dirname "$0")/study_lib.sh"
[ -d "$OUT/mae_fp32" ] || run mae_fp32 --config configs/mae_mnist.yaml --trainer.precision 32-true
[ -d "$OUT/mae_bf16" ] || run mae_bf16 --config configs/mae_mnist.yaml --trainer.precision bf16-mixed
FT=(--config configs/mae_mnist_finetune.yaml)
for seed in 0 1 2; do
  L=(--seed_everything "$seed" --data.init_args.label_seed "$seed")
  for p in fp32 bf16; do
    [ -d "$OUT/ft10_${p}_seed$seed" ] || run "ft10_${p}_seed$seed" "${FT[@]}" "${L[@]}" --model.init_args.init_from "$OUT/mae_$p" \
      --trainer.precision 32-true
  done
  [ -d "$OUT/ft10_bf16all_seed$seed" ] || run "ft10_bf16all_seed$seed" "${FT[@]}" "${L[@]}" \
    --model.init_args.init_from "$OUT/mae_bf16" --trainer.precision bf16-mixed
done
$PY scripts/mae_precision_summary.py "$OUT"
