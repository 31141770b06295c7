#!/usr/bin/env bash
# One call on a lent GPU box: the kernel tests on the GPU, a tile sweep, the bench and the JEPA
# step benchmark, in about 6 minutes (TUNE=0 STEP=0: tests and bench only, about 2). Knobs:
# TUNE=1 attention/EMA sweeps, GATHER_TUNE=1 gather backward sweep (+ a batch-256 gather bench),
# STEP=1 JEPA step, ATTN_TESTS=0 skips the attention tests, HD128=0 the head-dim-128 bench,
# BENCH=0 skips the kernel bench (tests, sweeps and the step only).
# Needs python with torch, triton and pytest; installs nothing and uses no network.
# Usage (from anywhere): bash kernels/device_check.sh [OUT_DIR]   (default: $OUT or ./device_check)
# Every step has its own timeout so one hang cannot eat the budget; logs and JSON land in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT_DIR="${1:-${OUT:-device_check}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
status=0

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT_DIR/device.txt"

# Tests: compile time dominates, so four pytest processes share the CPU cores.
ATTN=tests/kernels/interpret/test_interp_attention.py
run_tests() {  # name, pytest args...
  local name=$1; shift
  timeout 170 "$PY" -m pytest -q -p no:cacheprovider "$@" >"$OUT_DIR/tests_$name.txt" 2>&1
  echo "$name rc=$?" >>"$OUT_DIR/tests_rc.txt"
}
: >"$OUT_DIR/tests_rc.txt"
if [ "${ATTN_TESTS:-1}" = 1 ]; then
  run_tests attn_fp32 "$ATTN" -k "not gpu_half" &
  run_tests attn_bf16 "$ATTN" -k "gpu_half and bf16" &
  run_tests attn_fp16 "$ATTN" -k "gpu_half and fp16" &
fi
run_tests rest tests/kernels --ignore "$ATTN" &
wait
cat "$OUT_DIR/tests_rc.txt"
for f in "$OUT_DIR"/tests_[a-z]*_*.txt "$OUT_DIR"/tests_rest.txt; do tail -n 3 "$f"; done
grep -q "rc=[^0]" "$OUT_DIR/tests_rc.txt" && status=1
# One file of test logs (the device tool returns a handful of files per call).
for f in "$OUT_DIR"/tests_rc.txt "$OUT_DIR"/tests_[a-z]*_*.txt "$OUT_DIR"/tests_rest.txt; do
  echo "=== $f"; cat "$f"
done >"$OUT_DIR/tests.log" && rm -f "$OUT_DIR"/tests_*.txt
echo "tests done at $((SECONDS - start)) s"

# Tile sweep of the attention forward (CUDA-graph device time) at every preset; its winners are
# used by every bench below (--tiles), and go into kernels.attention as defaults when they hold.
TILES=""
if [ "${TUNE:-0}" = 1 ]; then
  timeout 170 "$PY" benchmarks/kernels_tune.py --kinds fwd --write "$OUT_DIR/tiles.json" \
    >"$OUT_DIR/tune_fwd.txt" 2>&1
  echo "tune fwd rc=$?"; grep winner "$OUT_DIR/tune_fwd.txt"
  [ -s "$OUT_DIR/tiles.json" ] && TILES="--tiles $OUT_DIR/tiles.json"
  timeout 80 "$PY" benchmarks/ema_tune.py >>"$OUT_DIR/tune_fwd.txt" 2>&1
  echo "tune ema rc=$?"; grep "^src" "$OUT_DIR/tune_fwd.txt"
fi

# Sweep of the gather backward's launch setting (benchmarks/gather_tune.py); its winner is used
# by the bench below (--gather-tile) and goes into kernels.gather.BWD_TILE when it holds.
if [ "${GATHER_TUNE:-0}" = 1 ]; then
  timeout 120 "$PY" benchmarks/gather_tune.py --write "$OUT_DIR/gather_tile.json" \
    >"$OUT_DIR/tune_gather.txt" 2>&1
  echo "tune gather rc=$?"; grep -A3 winner "$OUT_DIR/tune_gather.txt"
  if [ -s "$OUT_DIR/gather_tile.json" ]; then
    cp "$OUT_DIR/gather_tile.json" /tmp/gather_tile.json && rm "$OUT_DIR/gather_tile.json"
    TILES="$TILES --gather-tile /tmp/gather_tile.json"
  fi
fi

# Bench: JEPA presets without FlexAttention (it compiles per shape), then the head-dim-128
# long-sequence point for the FlashAttention-3 comparison. FLEX=1 adds FlexAttention at ViT-L.
bench() {  # name, seconds, bench args...
  local name=$1 secs=$2; shift 2
  timeout "$secs" "$PY" -m kernels.bench --json "$OUT_DIR/bench_$name.json" "$@" \
    >"$OUT_DIR/bench_$name.txt" 2>&1
  local rc=$?
  echo "bench $name rc=$rc"; tail -n 1 "$OUT_DIR/bench_$name.txt"
  [ $rc -eq 0 ] || status=1
}
[ "${BENCH:-1}" = 1 ] && bench main 130 --no-flex $TILES
[ "${GATHER_TUNE:-0}" = 1 ] && bench gather256 60 --kernels gather --batch 256 $TILES
[ "${FLEX:-0}" = 1 ] && bench flex 50 --kernels attention --presets vit-l $TILES
[ "${BENCH:-1}" = 1 ] && [ "${HD128:-1}" = 1 ] && bench hd128 40 --kernels attention --presets hd128 --batch 8 --keep 1,1 --no-flex $TILES

# One full JEPA training step (benchmarks/jepa_step.py) at batch 64 and at I-JEPA's per-GPU 128.
# "ours" replays the step and the target encoder from CUDA graphs (engine.graphs); "ours-tgraph"
# only the target encoder (the engine before the step's graphs), timed in the same rounds.
if [ "${STEP:-0}" = 1 ]; then
  ATILES=$(echo "$TILES" | sed 's/--gather-tile [^ ]*//')
  for b in 64 128; do
    timeout 120 "$PY" benchmarks/jepa_step.py --batch $b --steps 15 --rounds 3 --warmup 5 $ATILES \
      --paths ours,ours-tgraph,ref-trunc,ref-pad --mask-draws 6 \
      --json "$OUT_DIR/jepa_step_b$b.json" >"$OUT_DIR/jepa_step_b$b.txt" 2>&1
    echo "jepa_step batch $b rc=$?"; tail -n 1 "$OUT_DIR/jepa_step_b$b.txt"
  done
  cat "$OUT_DIR"/jepa_step_b*.txt >"$OUT_DIR/jepa_step.txt" && rm -f "$OUT_DIR"/jepa_step_b*.txt
fi
# The device tool brings back only a handful of files: the JSON reports travel as one archive.
if ls "$OUT_DIR"/*.json >/dev/null 2>&1; then
  (cd "$OUT_DIR" && tar czf json.tgz ./*.json && rm -f ./*.json)
fi
echo "device check finished in $((SECONDS - start)) s, status $status"
exit $status
