#!/usr/bin/env bash
# bert_pairs fine-tuned from bert_mlm vs from scratch, 3 seeds, one tokenizer (the MLM's, stored in its checkpoint).
#   bash scripts/mlm_vs_scratch.sh [OUT=runs/mlm_study]
# Prints one line per run: variant, seed, test/acc (2,000 pairs of 100 held-out numbers).
set -euo pipefail
OUT=${1:-runs/mlm_study}
ZOO=${ZOO:-zoo}
$ZOO fit --config configs/bert_mlm.yaml --trainer.default_root_dir "$OUT/bert_mlm" --trainer.enable_progress_bar false
for seed in 0 1 2; do
  $ZOO fit --config configs/bert_pairs.yaml --seed_everything "$seed" --model.init_args.init_from "$OUT/bert_mlm" \
      --trainer.default_root_dir "$OUT/pairs_mlm_seed$seed" --trainer.enable_progress_bar false
  $ZOO fit --config configs/bert_pairs.yaml --seed_everything "$seed" \
      --trainer.default_root_dir "$OUT/pairs_scratch_seed$seed" --trainer.enable_progress_bar false
done
for run in "$OUT"/pairs_*; do
  acc=$(python3 - "$run" <<'PY'
import csv, glob, sys
rows = [r for f in glob.glob(sys.argv[1] + "/version_*/metrics.csv") for r in csv.DictReader(open(f)) if r.get("test/acc")]
print(rows[-1]["test/acc"] if rows else "missing")
PY
)
  echo "$(basename "$run") $acc"
done
