#!/usr/bin/env bash
# Bring-up check of a GPU machine in one go, from a checkout, shaped for a short lease (a 10-minute call of a
# 15-minute budget): the most valuable stages first, every line logged as it comes, the results packed after every
# stage, so that a run cut off at any point still leaves every row that was recorded.
#
#   scripts/gpu_check.sh [OUT_DIR]           the check (default OUT_DIR build/gpu-check)
#   scripts/gpu_check.sh --after OUT_DIR     afterwards, on any CPU: predict the rows' peak memory and gate the
#                                            estimator on them (predictions cost 20-40 s a cell, so the GPU makes none)
# Environment: PYTHON (the interpreter), GRID (default gpu_smoke), RUN_ARGS (more `harness run` options),
#   CARRY (a folder from `make carry`: what a stock image lacks, installed first with pip --no-index),
#   BUDGET_S (seconds the whole check may take, default 540; a stage with less than its minimum left is skipped and
#   said; a cell gets at most what is left).
# Stages: install (CARRY) -> doctor -> one LoRA cell -> one full cell -> the rest of the grid -> the GPU tier -> the
#   report with plots (plots only at the end: matplotlib costs seconds a figure).
# In OUT_DIR: live.log (every stage's output, each line with its second since the start), stages.txt (each stage:
#   ran/failed/skipped and its seconds), doctor.txt/.json, test-gpu.txt, runs/<grid>/<group>/ (rows), report/, and
#   packed.tar.gz (rows, env, each cell's spec/result/log, the logs; no weights), rewritten after each stage.
# Exit 1 when a stage failed (doctor: a failed check); skipped stages are listed, not failures.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
grid=${GRID:-gpu_smoke}
name=$(basename "$grid" .yaml)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "${1:-}" = "--after" ]; then  # predictions and the estimator's gate, on any machine, after the GPU run
  out=${2:?usage: scripts/gpu_check.sh --after OUT_DIR}
  [ -d "$out/runs/$name" ] || { echo "gpu_check --after: $out/runs/$name: no rows of $grid there" >&2; exit 2; }
  exec 3>&1 4>&2 > >(tee "$out/estimate.txt") 2>&1
  log=$!
  status=0
  printf 'estimator_error: 0.10\ndefault: {ignore: true}\n' > "$out/estimator_rules.yaml"
  for group in "$out"/runs/"$name"/*/; do
    [ -f "$group/rows.jsonl" ] || continue
    "$py" -m harness estimate --rows "$group" || status=1
    # the gate needs rows with a measured allocated peak (CUDA's allocator); a CPU group has none
    if grep -q '"peak_mem_allocated_bytes"' "$group/rows.jsonl"; then
      "$py" -m harness compare "$group" "$group" --rules "$out/estimator_rules.yaml" || status=1
    else
      echo "gpu_check: $group: no row has a measured allocated peak (no GPU cell ran): nothing to gate"
    fi
    "$py" -m harness report "$group" --out "$out/report/$(basename "$group").md" || status=1
  done
  exec 1>&3 2>&4; wait "$log"  # estimate.txt is complete when this returns
  exit $status
fi

out=${1:-build/gpu-check}
budget=${BUDGET_S:-540}
mkdir -p "$out"
: > "$out/live.log"
: > "$out/stages.txt"
status=0
start=$(date +%s)

left() { echo $(( budget - ($(date +%s) - start) )); }

stamp() {  # each line with its second since the start, into live.log and to the console as it comes
  local line now
  while IFS= read -r line; do
    printf -v now '%(%s)T' -1
    printf '[+%4ds] %s\n' $(( now - start )) "$line"
  done | tee -a "$out/live.log"
}

pack() {  # what a cut-off run must not lose, in one archive replaced atomically: never the weights or the twins
  (cd "$out" && find . -type f -size -64M \( -name '*.json' -o -name '*.jsonl' -o -name '*.txt' -o -name '*.md' \
      -o -name '*.log' -o -name '*.yaml' \) ! -name '.packed*' ! -path '*/data/*' -print0 | tar --null -czf .packed.tmp -T - \
      && mv .packed.tmp packed.tar.gz)
}

stage() {  # stage NAME MIN_SECONDS COMMAND...: run it if MIN_SECONDS are left, bounded by what is left
  local stage_name=$1 need=$2 t0 rc
  shift 2
  if [ "$(left)" -lt "$need" ]; then
    echo "== $stage_name: skipped: $(left) s of the ${budget} s budget left, it needs $need" | stamp
    echo "$stage_name skipped" >> "$out/stages.txt"
    return
  fi
  echo "== $stage_name ($(left) s left)" | stamp
  t0=$(date +%s)
  # a shell function runs under timeout in a bash of its own; timeout signals its whole process group at the end
  timeout --signal=TERM --kill-after=30 "$(left)" bash -c '"$@"' stage "$@" 2>&1 | stamp
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then
    echo "$stage_name ran $(( $(date +%s) - t0 ))s" >> "$out/stages.txt"
  else
    status=1
    echo "$stage_name failed (exit $rc$([ "$rc" -eq 124 ] && echo ': out of budget')) $(( $(date +%s) - t0 ))s" \
      >> "$out/stages.txt"
  fi
  pack
}

install_carry() {
  "$py" -m pip install --no-index --find-links "$CARRY" -r install/carry-stock-gpu.txt
}

cells() {  # one stage of the grid; the runner skips cells that already have a row; no predictions here (--after)
  "$py" -m harness run "$grid" --results "$out/runs" --no-estimate --timeout "$(( $(left) - 20 ))" "$@" \
    ${RUN_ARGS:-}
}

report() {  # with plots: the last stage
  local group rc=0
  for group in "$out"/runs/"$name"/*/; do
    [ -f "$group/rows.jsonl" ] || continue
    "$py" -m harness report "$group" --out "$out/report/$(basename "$group").md" || rc=1
  done
  return $rc
}

doctor() {  # one run of the probes: the text here and in doctor.txt, the JSON in doctor.json
  "$py" -m harness doctor --save-json "$out/doctor.json" 2>&1 | tee "$out/doctor.txt"
  return "${PIPESTATUS[0]}"
}

gpu_tests() {
  "$py" -m pytest -q -rs -p no:cacheprovider -m gpu tests/gpu > "$out/test-gpu.txt" 2>&1
  local rc=$?
  tail -n 30 "$out/test-gpu.txt"
  return $rc
}

export py out grid name start budget
export -f left install_carry cells report doctor gpu_tests
echo "gpu_check: $grid into $out, budget ${budget} s, $(hostname), $(date -u +%FT%TZ)" | stamp
[ -n "${CARRY:-}" ] && stage install 30 install_carry
stage doctor 30 doctor
stage lora 60 cells --filter strategy=lora --filter attention=sdpa
stage full 60 cells --filter strategy=full --filter attention=sdpa
stage cells 60 cells
stage gpu-tests 45 gpu_tests
stage report 10 report
echo "gpu_check: done (status $status) in $(( $(date +%s) - start )) s; $(tr '\n' ';' < "$out/stages.txt")" | stamp
echo "gpu_check: predictions and the estimator's gate afterwards, on any CPU: scripts/gpu_check.sh --after $out" \
  | stamp
pack
exit $status
