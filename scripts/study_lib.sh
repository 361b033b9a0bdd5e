# Sourced by the study scripts (scripts/mae_*_study.sh): OUT, ZOO and PY from the environment, and run().
OUT=${1:-$DEFAULT_OUT}
ZOO=${ZOO:-zoo}
PY=${PY:-python}
mkdir -p "$OUT"
run() {  # run <name> <zoo fit args...>: one zoo fit into $OUT/<name>, its seconds appended to $OUT/log.tsv
  local name=$1; shift
  local start=$SECONDS
  $ZOO fit "$@" --trainer.default_root_dir "$OUT/$name" --trainer.enable_progress_bar false --trainer.enable_model_summary false
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$OUT/log.tsv"
}
