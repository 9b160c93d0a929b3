#!/usr/bin/env bash
# Bring-up check of a GPU machine, in one go, from a checkout (no install needed: a stock CUDA image with torch,
# transformers >= 5.24, peft, accelerate, pydantic, pyyaml, numpy, pillow, safetensors and tokenizers will do).
#   scripts/gpu_check.sh [OUT_DIR]      (default build/gpu-check; PYTHON=... picks the interpreter, GRID=... the grid)
# Writes OUT_DIR/doctor.txt, doctor.json, test-gpu.txt, cells.txt, the grid's rows under OUT_DIR/runs/ and their
# report under OUT_DIR/report/; copy the group to results/measured/<group>/ to commit measured rows.
# Order, for a short device lease: doctor, the GPU tier, then one LoRA and one full cell, then the rest of the grid.
# Each cell's row is written when it ends and the report is rewritten after each stage, so a run cut short still
# leaves the rows and a report of what finished. Exit 1 when any stage failed (doctor: a failed check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu-check}
py=${PYTHON:-python3}
grid=${GRID:-gpu_smoke}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

report() {
  local name
  name=$(basename "$grid" .yaml)
  for group in "$out"/runs/"$name"/*/; do
    [ -f "$group/rows.jsonl" ] && "$py" -m harness report "$group" --out "$out/report/$(basename "$group").md"
  done
}

cells() {  # one stage of the grid; cells that already have a row are skipped by the runner
  echo "== gpu_check: $grid $*" | tee -a "$out/cells.txt"
  "$py" -m harness run "$grid" --results "$out/runs" "$@" ${RUN_ARGS:-} 2>&1 | tee -a "$out/cells.txt" || status=1
  report
}

"$py" -m harness doctor 2>&1 | tee "$out/doctor.txt" || status=1
"$py" -m harness doctor --json > "$out/doctor.json" || status=1
"$py" -m pytest -q -rs -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$out/test-gpu.txt" || status=1
cells --filter strategy=lora --filter attention=sdpa
cells --filter strategy=full --filter attention=sdpa
cells
echo "gpu_check: done (status $status); results in $out"
exit $status
