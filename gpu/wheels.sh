#!/usr/bin/env bash
# Pack what the GPU check needs and a GPU machine lacks into parts that fit a run's 64 MiB:
# the serving wheels (FastAPI, uvicorn, pydantic, msgspec, orjson, ...), onnxruntime-gpu and a
# model folder, in one xz-compressed tar split into parts of at most PART_MIB. gpu/README.md says
# why each step; gpu/CALLS.md has the runs that carry the parts.
#
#   gpu/wheels.sh            # onnxruntime-gpu pruned to sm_90 (H100, H200): 2 parts
#   gpu/wheels.sh --full     # every architecture (any GPU): 4 parts
#
# Settings (environment): MODEL (a model version folder; default: the newest under models/, else
# under runs/gpu/models),
# PY (the GPU machine's Python, 3.12), ORT (onnxruntime-gpu version, 1.31.1: CUDA 13, cuDNN 9),
# ARCH (SM versions kept, 90), PART_MIB (60), XZ_LEVEL (-9e), WHL (the output folder, .whl).
# Versions of the serving wheels are those installed in .venv, so the GPU machine runs what the
# tests here ran. Writes WHL/part-00, part-01, ... and WHL/SUMS; WHL is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-3.12}
ORT=${ORT:-1.31.1}
ARCH=${ARCH:-90}
PART_MIB=${PART_MIB:-60}
XZ_LEVEL=${XZ_LEVEL:--9e}
WHL=${WHL:-.whl}
VENV_PY=${VENV_PY:-.venv/bin/python}
FULL=0
[[ "${1:-}" == "--full" ]] && FULL=1
# FastAPI and its stack (the `serve-base` extra) less what the GPU machine has (numpy, anyio,
# h11, click, uvloop, httpx, prometheus-client) and what the check does not use (redis,
# websockets, watchfiles).
SERVE=(fastapi starlette fastapi-offline annotated-doc opentelemetry-api uvicorn httptools
  pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
  typing-extensions msgspec orjson)

newest() { "$VENV_PY" -c "from service.engine import newest_version as n; print(n('$1'))" 2>/dev/null; }
MODEL=${MODEL:-$(newest models || newest runs/gpu/models || true)}
test -f "${MODEL:-.}/manifest.json" || { echo "no model (make train, or MODEL=folder)"; exit 1; }
grep -qxF "/$WHL/" .git/info/exclude 2>/dev/null || echo "/$WHL/" >>.git/info/exclude

t0=$SECONDS
rm -rf "$WHL" && mkdir -p "$WHL/stage/wheels" "$WHL/stage/site" "$WHL/stage/model"
tag=${PY/./}
download() {  # the device README's recipe: cp$tag manylinux x86_64 wheels only, no dependencies
  "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$1" "${@:2}"
}
pins=()
for p in "${SERVE[@]}"; do
  pins+=("$p==$("$VENV_PY" -c "import importlib.metadata as m; print(m.version('$p'))")")
done
download "$WHL/stage/wheels" "${pins[@]}"
download "$WHL/ort" "onnxruntime-gpu==$ORT"
echo "downloaded $(ls "$WHL/stage/wheels" | wc -l) serving wheels and onnxruntime-gpu $ORT" \
  "($(du -m "$WHL"/ort/*.whl | cut -f1) MB) in $((SECONDS - t0)) s"

# onnxruntime-gpu is unzipped into the site folder as pip would install it (it has no scripts to
# make), so the pruned library is what arrives, with no RECORD digest to disagree with.
"$VENV_PY" -m zipfile -e "$WHL"/ort/*.whl "$WHL/stage/site"
rm -rf "$WHL/ort"
lib="$WHL/stage/site/onnxruntime/capi/libonnxruntime_providers_cuda.so"
pruned=null
if [[ $FULL == 0 ]]; then
  "$VENV_PY" gpu/prune_fatbin.py "$lib" --keep "$ARCH"
  pruned="\"sm_${ARCH//,/, sm_}\""
fi
version=$(basename "$MODEL")
name=$(basename "$(dirname "$MODEL")")
mkdir -p "$WHL/stage/model/$name"
cp -r "$MODEL" "$WHL/stage/model/$name/$version"
cat >"$WHL/stage/PACK.json" <<EOF
{"python": "$PY", "onnxruntime_gpu": "$ORT", "pruned_to": $pruned,
 "model": "$name/$version", "made": "$(date -u +%FT%TZ)", "commit": "$(git rev-parse --short HEAD)",
 "wheels": [$(printf '"%s",' "${pins[@]}" | sed 's/,$//')]}
EOF

t1=$SECONDS
tar -C "$WHL/stage" -cf - . | xz "$XZ_LEVEL" -T2 >"$WHL/pack.tar.xz"
size=$(stat -c %s "$WHL/pack.tar.xz")
echo "packed $(du -sm "$WHL/stage" | cut -f1) MB into $((size / 1048576)) MiB (xz $XZ_LEVEL," \
  "$((SECONDS - t1)) s)"
part_bytes=$((PART_MIB * 1048576))
n=$(((size + part_bytes - 1) / part_bytes))
chunk=$(((size + n - 1) / n)) # equal parts: the last run has the most room for the tree
split -b "$chunk" -d -a 2 "$WHL/pack.tar.xz" "$WHL/part-"
arch=all
[[ $FULL == 0 ]] && arch=sm_$ARCH
echo "# pruned_to=$arch python=$PY onnxruntime_gpu=$ORT model=$name/$version" >"$WHL/SUMS"
(cd "$WHL" && sha256sum part-* pack.tar.xz >>SUMS)
rm -rf "$WHL/pack.tar.xz" "$WHL/stage"

echo
echo "$n parts of at most $PART_MIB MiB (model $name/$version, onnxruntime-gpu $ORT," \
  "CUDA code for $arch):"
ls -l "$WHL"/part-* | awk '{printf "  %s  %.1f MiB\n", $NF, $5 / 1048576}'
echo "runs: $n, back to back (the machine keeps /tmp only while it stays up):"
env=""
[[ $WHL == .whl ]] || env="WHL=$WHL "
for ((i = 0; i < n; i++)); do
  p=$(printf "part-%02d" "$i")
  cmd="${env}bash gpu/check.sh"
  ((i < n - 1)) && cmd+=" stash"
  echo "  run $((i + 1)): carry [\"$WHL/$p\", \"$WHL/SUMS\"]  command: $cmd"
done
echo "done in $((SECONDS - t0)) s"
