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
# the memory estimator against the GPU: every GPU cell got a prediction before it ran (run --estimate is the
# default for GPU cells); predicted vs torch.cuda.max_memory_allocated per cell, then the gate at +-10% for each
# group that has them (a GPU group without any is a failure; a CPU grid has nothing to check)
"$py" - "$out/runs/$(basename "$grid" .yaml)" "$out/estimator_groups.txt" <<'PY' 2>&1 | tee "$out/estimate.txt" || status=1
import json, sys
from pathlib import Path
groups, gpu_rows = [], 0
for rows in sorted(Path(sys.argv[1]).glob("*/rows.jsonl")):
    checked = 0
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        p, m = row.get("predicted") or {}, row.get("metrics") or {}
        gpu_rows += row["spec"].get("gpu", "cpu").lower() != "cpu" and row["status"] == "ok"
        if p.get("peak_bytes") and m.get("peak_mem_allocated_bytes"):
            checked += 1
            print(f"cell {row['cell']} {row['spec']['strategy']} {row['spec']['attention']}: predicted "
                  f"{p['peak_bytes'] / 2**30:.3f} GiB ({p['phase']}), measured "
                  f"{m['peak_mem_allocated_bytes'] / 2**30:.3f} GiB allocated, ratio "
                  f"{m['peak_mem_allocated_bytes'] / p['peak_bytes']:.3f}")
    if checked:
        groups.append(str(rows.parent))
Path(sys.argv[2]).write_text("".join(g + "\n" for g in groups))
if gpu_rows and not groups:
    sys.exit("gpu_check: GPU cells ran but none has both a prediction and a measured allocated peak")
if not gpu_rows:
    print("gpu_check: no GPU cell ran: the estimator has no allocated peak to be checked against")
PY
printf 'estimator_error: 0.10\ndefault: {ignore: true}\n' > "$out/estimator_rules.yaml"
while read -r group; do
  "$py" -m harness compare "$group" "$group" --rules "$out/estimator_rules.yaml" 2>&1 | tee -a "$out/estimate.txt" \
    || status=1
done < "$out/estimator_groups.txt"
echo "gpu_check: done (status $status); results in $out"
exit $status
