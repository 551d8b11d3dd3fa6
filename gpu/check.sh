#!/usr/bin/env bash
# The GPU check (issue 13), on the GPU machine, from the repository root (gpu/README.md):
#
#   bash gpu/check.sh stash   # a run before the last: keep the part it carried in /tmp
#   bash gpu/check.sh         # the last run: join and unpack the parts, install, then check
#
# Checks, each with a time limit, each run even when one before it failed, each writing to $OUT:
# nvidia-smi; the tests of I/O binding and CUDA graphs on the real model (RANKER_TEST_MODEL) with
# the batcher's and the settings' tests; GPU scores against CPU scores (gpu/parity.py); the
# serving benchmark (gpu/bench.py). $OUT gets check.log, pytest.txt, parity.json, bench.json,
# bench.md, servers.log and gpu-util.csv. GPU_CHECK_PROVIDER=cpu runs it all on the CPU
# provider: the rehearsal on a machine without a GPU. Settings (environment): OUT (runs/gpu/out),
# PYTHON (python3), GPU_PARTS (/tmp/gpu-parts), GPU_STAGE (/tmp/gpu-stage), GPU_SITE (/tmp/site),
# GPU_BENCH_ARGS (more arguments for gpu/bench.py, e.g. --seconds 4).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu/out}
PY=${PYTHON:-python3}
PROVIDER=${GPU_CHECK_PROVIDER:-cuda}
PARTS=${GPU_PARTS:-/tmp/gpu-parts}
STAGE=${GPU_STAGE:-/tmp/gpu-stage}
SITE=${GPU_SITE:-/tmp/site}
mkdir -p "$OUT"
LOG=$OUT/check.log
step() { echo "== $(date -u +%T) +${SECONDS}s $*" | tee -a "$LOG"; }
failed=()
run() { # run NAME LIMIT_S CMD...: output to the log (and to $COPY), failure noted, go on
  local name=$1 limit=$2
  shift 2
  step "$name (at most ${limit}s)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" ${COPY:+"$COPY"}
  local rc=${PIPESTATUS[0]}
  ((rc == 0)) || { failed+=("$name:$rc"); step "$name failed ($rc)"; }
}

step "stash ${WHL:-.whl}/part-* into $PARTS"
$PY gpu/unpack.py stash "${WHL:-.whl}" "$PARTS" 2>&1 | tee -a "$LOG"
# A pack pruned to one GPU architecture (wheels.sh) runs on that one only: say so before the
# last run is spent on it.
want=$(sed -n 's/^# pruned_to=sm_\([0-9,]*\) .*/\1/p' "$PARTS/SUMS" 2>/dev/null)
if command -v nvidia-smi >/dev/null; then
  cap=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -1)
  step "GPU: $cap; the pack's CUDA code: sm_${want:-all}"
  have=${cap##*, }
  if [[ -n $want && ",$want," != *",${have/./},"* ]]; then
    step "this GPU is sm_${have/./}, the pack holds sm_$want only: make one with gpu/wheels.sh --full"
    exit 1
  fi
fi
[[ "${1:-}" == stash ]] && exit 0

step "unpack"
$PY gpu/unpack.py unpack "$PARTS" "$STAGE" 2>&1 | tee -a "$LOG"
((PIPESTATUS[0] == 0)) || exit 1
cat "$STAGE/PACK.json" | tee -a "$LOG"

step "install into $SITE"
# CUDA and cuDNN come from the NVIDIA wheels PyTorch installed; onnxruntime's preload_dlls()
# looks for them beside itself (SITE/nvidia), and the loader finds them on LD_LIBRARY_PATH.
NV=$($PY -c 'import importlib.util as u; s = u.find_spec("nvidia")
print(next((p for p in (s.submodule_search_locations or []) if p), "") if s else "")')
rm -rf "$SITE" && mkdir -p "$SITE"
if $PY -m pip --version >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$STAGE"/wheels/*.whl 2>&1 | tee -a "$LOG"
else # no pip: a wheel is a zip of what pip would copy (none of these has scripts)
  for w in "$STAGE"/wheels/*.whl; do $PY -m zipfile -e "$w" "$SITE"; done
fi
cp -r "$STAGE/site/." "$SITE/"
if [[ -n $NV ]]; then
  ln -sfn "$NV" "$SITE/nvidia"
  LIBS=$(find -L "$NV" -maxdepth 2 -type d -name lib | paste -sd:)
  export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONPATH=$SITE:$PWD
grep -q "Engine.from_settings" service/reload.py ||
  step "WARNING: service/reload.py makes its engine without Engine.from_settings: the servers" \
    "ignore RANKER_CUDA_GRAPH and RANKER_MAX_BATCH_ROWS's buffers (gpu/CALLS.md)"
MODEL=$(dirname "$(find "$STAGE/model" -name manifest.json | head -1)")
step "nvidia libraries: ${NV:-none}; model: $MODEL"
$PY -c 'import onnxruntime as o, fastapi, uvicorn, pydantic, msgspec, orjson
print("onnxruntime", o.__version__, o.get_device(), o.get_available_providers(), o.__file__)
print("fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "pydantic", pydantic.VERSION)
' 2>&1 | tee -a "$LOG"

if command -v nvidia-smi >/dev/null; then run nvidia-smi 30 nvidia-smi; else step "no nvidia-smi"; fi
# the tests: I/O binding and CUDA graphs on CPU and CUDA, the batcher, the settings
rm -f "$OUT/pytest.txt"
COPY=$OUT/pytest.txt run pytest 150 env RANKER_TEST_MODEL="$MODEL" $PY -m pytest -q \
  -p no:cacheprovider tests/service/test_iobinding.py tests/service/test_batcher.py \
  tests/service/test_config.py
run parity 120 $PY gpu/parity.py --model "$MODEL" --provider "$PROVIDER" --out "$OUT/parity.json"
# GPU load while the benchmark runs, twice a second
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv \
  -lms 500 >"$OUT/gpu-util.csv" 2>/dev/null &
sampler=$!
# shellcheck disable=SC2086
run bench 330 $PY gpu/bench.py --model "$MODEL" --provider "$PROVIDER" --out "$OUT" \
  ${GPU_BENCH_ARGS:-}
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
[[ -s $OUT/gpu-util.csv ]] || rm -f "$OUT/gpu-util.csv"

step "done in ${SECONDS}s; failed: ${failed[*]:-none}"
ls -l "$OUT" | tee -a "$LOG"
((${#failed[@]} == 0))
