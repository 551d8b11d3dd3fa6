#!/usr/bin/env bash
# make gpu-image: the GPU compose override (docker-compose.gpu.yml) built and checked as far as a
# machine without a GPU allows, with Podman as in make compose-test (tests/compose/podman.sh).
#
#   1. the override as compose merges it: the image name, the build argument and RANKER_PROVIDERS
#      it sets and the GPU it reserves; and what podman-compose would run from it (--dry-run):
#      the reservation must become the NVIDIA CDI device
#   2. the image built with the merged build arguments (the `gpu` extra: onnxruntime-gpu with the
#      CUDA 13 and cuDNN 9 wheels; several GB downloaded on a first build)
#   3. inside it (gpu/image_probe.py): onnxruntime-gpu alone (never with the CPU build), the CUDA
#      provider built in, the CUDA runtime, cuBLAS and cuDNN loaded from the wheels, and nothing
#      but the driver unresolved for the CUDA provider library
#   4. run as the override runs it (RANKER_PROVIDERS=cuda) on this GPU-less machine: it must exit
#      non-zero, saying why, without ever becoming ready
#   5. the same image with RANKER_PROVIDERS=auto: serves /rank on the CPU provider
# Writes $OUT/report.json and report.md (and the logs); fails on the first check that fails.
# Not part of CI (the download); run it after changing the Dockerfile, the gpu extra or the
# override. Settings (environment): GPU_IMAGE_OUT (runs/gpu-image), GPU_IMAGE_WORK
# (/tmp/ranker-gpu-image), GPU_IMAGE_PORT (18010), VENV (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_IMAGE_OUT:-runs/gpu-image}
WORK=${GPU_IMAGE_WORK:-/tmp/ranker-gpu-image}
PORT=${GPU_IMAGE_PORT:-18010}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
mkdir -p "$WORK" "$OUT"
: >"$OUT/image.log"
t0=$(date +%s)
say() { printf '[gpu-image %4ss] %s\n' "$(($(date +%s) - t0))" "$*" | tee -a "$OUT/image.log"; }
fail() { say "FAILED: $*"; exit 1; }
# shellcheck source=../tests/compose/podman.sh
source tests/compose/podman.sh
podman_ready

# 1. the override, merged and dry-run (nothing is brought up: the password is a placeholder)
export RANKER_REDIS_PASSWORD=not-used-by-the-check
compose=("$VENV/bin/podman-compose")
files=(-f docker-compose.yml -f docker-compose.gpu.yml)
"${compose[@]}" "${files[@]}" config >"$OUT/merged.yml" 2>"$WORK/config.err" \
  || { cat "$WORK/config.err"; fail "podman-compose config"; }
read -r image extra providers driver < <("$PY" - "$OUT/merged.yml" <<'EOF'
import sys, yaml
r = yaml.safe_load(open(sys.argv[1]))["services"]["ranker"]
devices = r.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
gpu = [d for d in devices if "gpu" in d.get("capabilities", [])]
def as_dict(v):  # compose takes a mapping or a list of NAME=VALUE
    return v if isinstance(v, dict) else dict(e.split("=", 1) for e in v)
env, args = as_dict(r["environment"]), as_dict(r["build"]["args"])
print(r["image"], args["EXTRA"], env["RANKER_PROVIDERS"],
      gpu[0]["driver"] if gpu else "none")
EOF
)
say "merged override: image $image, EXTRA=$extra, RANKER_PROVIDERS=$providers, GPU driver $driver"
[ "$driver" = nvidia ] || fail "the override reserves no NVIDIA GPU"
"${compose[@]}" --verbose --dry-run "${files[@]}" up -d --no-build >"$WORK/dry-run.txt" 2>&1 \
  || { cat "$WORK/dry-run.txt"; fail "podman-compose --dry-run up"; }
cdi=$(grep -o -- '--device nvidia.com/gpu=[a-z0-9,]*' "$WORK/dry-run.txt" | head -n1 || true)
[ -n "$cdi" ] || { cat "$WORK/dry-run.txt"; fail "podman-compose would not pass the GPU"; }
say "podman-compose would run the ranker with $cdi"

# 2. the image
t_build=$(date +%s)
build_image "$image" --build-arg "EXTRA=$extra"
build_s=$(($(date +%s) - t_build))
size=$(podman image inspect --format '{{.Size}}' "$image")
say "built $image in ${build_s}s: $((size / 1024 / 1024)) MiB"

# 3. inside it
podman run --rm -i --entrypoint /opt/ranker/bin/python "$image" - <gpu/image_probe.py \
  >"$OUT/probe.json" 2>"$WORK/probe.err" || { cat "$WORK/probe.err"; fail "the probe"; }
"$PY" - "$OUT/probe.json" <<'EOF' | tee -a "$OUT/image.log"
import json, sys
p = json.load(open(sys.argv[1]))
d = p["distributions"]
problems = []
if "onnxruntime-gpu" not in d or "onnxruntime" in d:
    problems.append(f"want onnxruntime-gpu alone, have {sorted(k for k in d if 'onnx' in k)}")
if "CUDAExecutionProvider" not in p["providers"]:
    problems.append(f"no CUDAExecutionProvider in {p['providers']}")
if p["preload_error"] or not any(n.startswith("libcudnn") for n in p["preloaded"]):
    problems.append(f"CUDA/cuDNN did not preload: {p['preload_error']} {p['preloaded']}")
left = set(p.get("cuda_provider_unresolved", ["(no CUDA provider library)"])) - {"libcuda.so.1"}
if left:
    problems.append(f"the CUDA provider library cannot resolve {sorted(left)}")
print(f"onnxruntime-gpu {d.get('onnxruntime-gpu')}, {len(d) - 1} NVIDIA wheels; providers "
      f"{p['providers']}; preloaded {len(p['preloaded'])} libraries; unresolved "
      f"{p.get('cuda_provider_unresolved')}")
sys.exit("; ".join(problems) or None)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || fail "the image's ONNX Runtime"

# 4. as the override runs it, without a GPU: a clean refusal
say "RANKER_PROVIDERS=$providers on a machine without a GPU"
set +e
timeout 180 podman run --rm -e "RANKER_PROVIDERS=$providers" "$image" >"$OUT/refusal.log" 2>&1
rc=$?
set -e
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "exit status $rc (want a refusal): $(tail -n 5 "$OUT/refusal.log")"
grep -q "RANKER_PROVIDERS=cuda" "$OUT/refusal.log" || fail "the refusal does not say why"
reason=$(grep -m1 "RANKER_PROVIDERS=cuda" "$OUT/refusal.log" | cut -c1-240)
say "refused with exit status $rc: $reason"

# 5. the same image on the CPU provider
name=ranker-gpu-image-check
podman rm -f "$name" >/dev/null 2>&1 || true
trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
podman run -d --name "$name" -p "127.0.0.1:$PORT:8000" -e RANKER_PROVIDERS=auto "$image" >/dev/null
url=http://127.0.0.1:$PORT
for _ in $(seq 120); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$url/readyz" >/dev/null || { podman logs "$name" | tail -n 30; fail "not ready"; }
curl -fsS "$url/v1/model" >"$OUT/model.json"
body='{"user_id": "gpu-image", "user_features": {"101": 5, "109_14": {"ids": [1, 2], "weights": [2, 1]}},
 "candidates": [{"item_id": "a", "features": {"205": 7, "206": 3}, "price": 3.0},
                {"item_id": "b", "features": {"205": 8, "206": 4}, "price": 9.5}]}'
curl -fsS -X POST "$url/rank" -H 'content-type: application/json' -d "$body" >"$OUT/rank.json" \
  || fail "/rank on the CPU provider"
served=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["providers"])' \
  "$OUT/model.json")
say "RANKER_PROVIDERS=auto serves on $served: /rank $(head -c 120 "$OUT/rank.json")..."

"$PY" - "$OUT" "$image" "$build_s" "$size" "$cdi" "$rc" "$served" <<'EOF'
import json, sys, datetime
out, image, build_s, size, cdi, rc, served = sys.argv[1:]
probe = json.load(open(f"{out}/probe.json"))
report = {
    "date": datetime.date.today().isoformat(), "image": image, "build_seconds": int(build_s),
    "size_mib": round(int(size) / 2**20), "compose_device": cdi.split()[-1],
    "refusal_exit_status": int(rc), "auto_providers": served, **probe,
}
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
nv = {k: v for k, v in probe["distributions"].items() if k.startswith("nvidia-")}
md = [
    f"# GPU image check, {report['date']} (`make gpu-image`, no GPU on this machine)", "",
    "| check | result |", "|---|---|",
    f"| image | `{image}`, {report['size_mib']} MiB, built in {build_s} s |",
    f"| GPU reservation, as podman-compose runs it | `{report['compose_device']}` |",
    f"| ONNX Runtime | onnxruntime-gpu {probe['distributions'].get('onnxruntime-gpu')} alone |",
    f"| NVIDIA wheels | {', '.join(f'{k} {v}' for k, v in nv.items())} |",
    f"| providers built in | {', '.join(probe['providers'])} |",
    f"| loaded from the wheels | {', '.join(probe['preloaded'])} |",
    f"| unresolved for the CUDA provider | {', '.join(probe['cuda_provider_unresolved'])} |",
    f"| RANKER_PROVIDERS=cuda without a GPU | exit status {rc}, says why |",
    f"| RANKER_PROVIDERS=auto | serves /rank on {served} |",
]
open(f"{out}/report.md", "w").write("\n".join(md) + "\n")
EOF
say "passed; $OUT/report.md"
