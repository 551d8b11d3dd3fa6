#!/usr/bin/env bash
# make compose-test: build and run the compose stack for real, with Podman (no Docker engine runs
# on these machines), send real /rank requests through the published port, check the Redis tier
# is used and refuses clients without its password, then bring it down and clean up what it
# created. Redis's password is random for every run.
#
# The project's Dockerfile and compose file are used unchanged; only this harness provides what
# a registry would: stand-in base images (python:3.11-slim-bookworm, redis:7-bookworm) built from
# a debootstrap of Debian bookworm off the machine's configured apt mirror, and, for pip inside
# the build, the host's CA bundle, pip configuration and local wheels mounted into the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
WORK=${COMPOSE_TEST_WORK:-/tmp/ranker-compose-test}
PORT=${COMPOSE_TEST_PORT:-18000}
VENV=${VENV:-.venv}
KEEP_IMAGES=${KEEP_IMAGES:-1}  # 1: keep base and built images for the next run (warm start)
mkdir -p "$WORK"
t0=$(date +%s)
say() { printf '[compose-test %3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

# 1. tools
need=()
for tool in podman runc debootstrap slirp4netns fuse-overlayfs newuidmap; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
  say "installing podman and friends (missing: ${need[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc uidmap fuse-overlayfs \
    slirp4netns debootstrap >/dev/null
fi
"$VENV/bin/python" -m pip install --quiet podman-compose
# Containers run with runc and explicit ulimits under this machine's hard limits.
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

# 2. stand-in base images
if ! podman image exists localhost/bookworm-base:latest; then
  mirror=$(grep -rhE '^(deb|URIs:) ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -E '/debian/?( |$)' | grep -v security | head -n1 | awk '{print $2}' || true)
  [ -n "$mirror" ] || { echo "no Debian mirror in the apt sources" >&2; exit 1; }
  say "debootstrap bookworm (minbase + python3, redis)"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,redis-server,redis-tools,ca-certificates \
    bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1
  tar -C "$WORK/rootfs" -c . | podman import - localhost/bookworm-base:latest >/dev/null
  rm -rf "$WORK/rootfs"
fi
podman tag localhost/bookworm-base:latest docker.io/library/python:3.11-slim-bookworm
podman tag localhost/bookworm-base:latest docker.io/library/redis:7-bookworm

# 3. the ranker image, from the project's Dockerfile
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
[ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
[ -d /opt/wheels ] && mounts+=(-v /opt/wheels:/opt/wheels:ro)
say "podman build (target runtime)"
podman build --network host --pull=never "${mounts[@]}" --target runtime -t ranker:latest . \
  >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; exit 1; }

# 4. up, and always down again
RANKER_REDIS_PASSWORD=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))')
export RANKER_REDIS_PASSWORD
compose() { RANKER_PUBLISHED_PORT=$PORT "$REPO/$VENV/bin/podman-compose" "$@"; }
cleanup() {
  say "down"
  compose down >/dev/null 2>&1 || true
  if [ "$KEEP_IMAGES" != 1 ]; then
    podman rmi -f ranker:latest docker.io/library/python:3.11-slim-bookworm \
      docker.io/library/redis:7-bookworm localhost/bookworm-base:latest >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
compose down >/dev/null 2>&1 || true
say "up"
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; exit 1; }
# podman-compose cannot wait on service_healthy here (no systemd for healthchecks): poll /readyz.
url=http://127.0.0.1:$PORT
for _ in $(seq 120); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$url/readyz" >/dev/null || { compose logs ranker 2>&1 | tail -n 30; exit 1; }
say "ready: $(curl -fsS "$url/readyz")"

# 5. real requests through the published port
body='{"user_id": "compose-test", "user_features": {"101": 5, "109_14": {"ids": [1, 2, 3], "weights": [3, 1, 1]}},
 "candidates": [{"item_id": "a", "features": {"205": 7, "206": 3}, "price": 3.0},
                {"item_id": "b", "features": {"205": 8, "210": [4, 5]}, "price": 9.5}],
 "fusion": {"c": 0.5}}'
rank() { curl -fsS -X POST "$url/rank" -H 'content-type: application/json' -d "$body"; }
first=$(rank)
echo "$first" | grep -q '"user_cache":"miss"' || { echo "first /rank: $first" >&2; exit 1; }
echo "$first" | grep -q '"item_id":"a"' || { echo "first /rank: $first" >&2; exit 1; }
container() { podman ps -q --filter "label=com.docker.compose.service=$1" | head -n1; }
redis=$(container redis)
# redis-cli exits 0 on an error reply: read what it says. REDIS_PASSWORD is the redis
# container's variable from the compose file.
keys=$(podman exec "$redis" sh -c 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --scan' \
  | grep -c '^ranker:' || true)
[ "$keys" -ge 1 ] || { echo "the ranker wrote nothing to Redis" >&2; exit 1; }
# The compose file's healthcheck as written there (podman-compose runs none here).
check=$("$VENV/bin/python" -c 'import yaml; t = yaml.safe_load(open("docker-compose.yml"))
print(t["services"]["redis"]["healthcheck"]["test"][1].replace("$$", "$"))')
podman exec "$redis" sh -c "$check" || { echo "redis healthcheck failed: $check" >&2; exit 1; }
# Without the password Redis answers nothing: to redis-cli in its own container, and to a client
# in another container on the compose network (the ranker's, with its redis library).
noauth=$(podman exec "$redis" redis-cli ping 2>&1 || true)
echo "$noauth" | grep -q NOAUTH || { echo "redis-cli ping without auth: $noauth" >&2; exit 1; }
podman exec "$(container ranker)" /opt/ranker/bin/python -c '
import sys, redis
try:
    redis.Redis(host="redis", socket_timeout=2).ping()
except redis.RedisError as e:
    sys.exit(0 if "auth" in str(e).lower() else f"not an authentication error: {e!r}")
sys.exit("redis answered a client without the password")' \
  || { echo "redis did not refuse an unauthenticated client on the network" >&2; exit 1; }
# A restarted ranker has an empty in-process cache: only Redis can answer with a hit.
podman restart "$(container ranker)" >/dev/null
for _ in $(seq 120); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 1; done
second=$(rank)
echo "$second" | grep -q '"user_cache":"hit"' || { echo "after restart: $second" >&2; exit 1; }
curl -fsS "$url/metrics" | grep -q 'ranker_user_cache_total{outcome="hit",tier="redis"} 1.0' \
  || { echo "no Redis hit in /metrics" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/rank" \
  -H 'content-type: application/json' -d '{"user_id": 1}')
[ "$code" = 422 ] || { echo "bad request answered $code" >&2; exit 1; }
say "passed: /rank miss then Redis hit after a restart, $keys key(s) in Redis, Redis healthy" \
  "with its password and NOAUTH without it (in its container and over the network), bad input 422"
trap - EXIT
cleanup
say "done"
echo "compose-test: 1 passed, 0 failed"
