#!/usr/bin/env bash
# MAE pre-training once, then fine-tuning with 10% of the labels (seeds 0, 1, 2; label subset seeded alike) and
# with 100% (seeds 0, 1, 2), each from the MAE encoder and from scratch with the same recipe; then the linear probes.
#   bash scripts/mae_mnist_study.sh [OUT=runs/mae_study]
# Runs one after another; writes $OUT/log.tsv (variant, seed, run folder, seconds) and results/studies/mae_mnist.json.
# Every run in float32 as measured there (PRECISION=bf16-mixed for the recipes' own precision since they train in
# bf16; scripts/mae_precision_study.sh compares the two).
set -euo pipefail
DEFAULT_OUT=runs/mae_study
source "$(dirname "$0")/study_lib.sh"
[ -d "$OUT/mae" ] || run mae --config configs/mae_mnist.yaml --trainer.precision "${PRECISION:-32-true}"
FT=(--config configs/mae_mnist_finetune.yaml --trainer.precision "${PRECISION:-32-true}")
for seed in 0 1 2; do
  L=(--seed_everything "$seed" --data.init_args.label_seed "$seed")
  run "ft10_mae_seed$seed" "${FT[@]}" "${L[@]}" --model.init_args.init_from "$OUT/mae"
  run "ft10_scratch_seed$seed" "${FT[@]}" "${L[@]}"
done
ALL=(--data.init_args.label_fraction 1.0 --trainer.max_epochs 20 --trainer.check_val_every_n_epoch 5)
for seed in 0 1 2; do
  run "ft100_mae_seed$seed" "${FT[@]}" "${ALL[@]}" --seed_everything "$seed" --model.init_args.init_from "$OUT/mae"
  run "ft100_scratch_seed$seed" "${FT[@]}" "${ALL[@]}" --seed_everything "$seed"
done
# control: the scratch arm of seed 0 with 4x the steps (is the gain the scratch ViT still learning at 720 steps?)
run ft10x4_scratch_seed0 "${FT[@]}" --seed_everything 0 --data.init_args.label_seed 0 --trainer.max_epochs 480 \
  --trainer.check_val_every_n_epoch 40
$PY scripts/mae_mnist_summary.py "$OUT"
