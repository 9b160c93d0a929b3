#!/usr/bin/env bash
# Bring-up check of a GPU machine, in one go, from a checkout (no install needed: a stock CUDA image with torch,
# transformers >= 5.24, peft, accelerate, pydantic, pyyaml, numpy, pillow, safetensors and tokenizers will do).
#   scripts/gpu_check.sh [OUT_DIR]      (default build/gpu-check; PYTHON=... picks the interpreter)
# Writes OUT_DIR/doctor.txt, doctor.json, test-gpu.txt, gpu_smoke.txt, the gpu_smoke rows under OUT_DIR/runs/ and
# their report under OUT_DIR/report/; copy the group to results/measured/<group>/ to commit measured rows.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
"$py" -m harness doctor 2>&1 | tee "$out/doctor.txt" || status=1
"$py" -m harness doctor --json > "$out/doctor.json" || status=1
"$py" -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$out/test-gpu.txt" || status=1
"$py" -m harness run gpu_smoke --results "$out/runs" ${RUN_ARGS:-} 2>&1 | tee "$out/gpu_smoke.txt" || status=1
for group in "$out"/runs/gpu_smoke/*/; do
  [ -f "$group/rows.jsonl" ] && "$py" -m harness report "$group" --out "$out/report/$(basename "$group").md"
done
echo "gpu_check: done (status $status); results in $out"
exit $status
