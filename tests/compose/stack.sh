#!/usr/bin/env bash
# make compose-test: build and run the compose stack for real, with Podman (no Docker engine runs
# on these machines): three rankers behind HAProxy, Redis, and Prometheus (`--scale ranker=3
# --profile metrics`). Send real /rank requests through the published port, check the Redis
# tier is used and refuses clients without its password, then prove the replicas and their
# failover (tests/compose/replicas.py: every replica reached, a Redis hit across replicas, a
# replica killed and another drained under load with no failed request, Prometheus scraping every
# replica), then bring it down and clean up what it created. Redis's password is random for
# every run. The figures measured on the way go to $WORK/figures.json.
#
# The project's Dockerfile and compose file are used unchanged; only this harness provides what
# a registry would (tests/compose/podman.sh): stand-in base images (python:3.11-slim-bookworm,
# redis:7-bookworm) built from a debootstrap of Debian bookworm off the machine's configured apt
# mirror, and, for pip inside the build, the host's CA bundle, pip configuration and local
# wheels mounted into the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
WORK=${COMPOSE_TEST_WORK:-/tmp/ranker-compose-test}
PORT=${COMPOSE_TEST_PORT:-18000}
STATS_PORT=${COMPOSE_TEST_STATS_PORT:-18404}
PROMETHEUS_PORT=${COMPOSE_TEST_PROMETHEUS_PORT:-19090}
PROJECT=ranker-compose-test
REPLICAS=3
VENV=${VENV:-.venv}
KEEP_IMAGES=${KEEP_IMAGES:-1}  # 1: keep base and built images for the next run (warm start)
mkdir -p "$WORK"
t0=$(date +%s)
say() { printf '[compose-test %3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

# 1. Podman, podman-compose and the stand-in base images; 2. the ranker image, from the
# project's Dockerfile (tests/compose/podman.sh)
# shellcheck source=podman.sh
source tests/compose/podman.sh
podman_ready
build_image ranker:latest

# 3. up, and always down again
RANKER_REDIS_PASSWORD=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))')
export RANKER_REDIS_PASSWORD
compose() {
  RANKER_PUBLISHED_PORT=$PORT RANKER_LB_STATS_PORT=$STATS_PORT \
    RANKER_PROMETHEUS_PORT=$PROMETHEUS_PORT \
    "$REPO/$VENV/bin/podman-compose" -p "$PROJECT" --profile metrics "$@"
}
down() {
  # podman-compose's down knows one container per service: the scaled ones go by their label
  # (a container that was just started may refuse once: try again)
  local ids _
  ours() { podman ps -aq --filter "label=io.podman.compose.project=$PROJECT"; }
  for _ in 1 2 3; do
    ids=$(ours)
    [ -n "$ids" ] || break
    podman rm -f --depend -t 5 $ids >"$WORK/down.log" 2>&1 || sleep 2
  done
  ids=$(ours)
  [ -z "$ids" ] || { echo "left behind: $ids" >&2; tail -n 5 "$WORK/down.log" >&2; }
  compose down >/dev/null 2>&1 || true
}
cleanup() {
  say "down"
  down
  if [ "$KEEP_IMAGES" != 1 ]; then
    podman rmi -f ranker:latest docker.io/library/python:3.11-slim-bookworm \
      docker.io/library/redis:7-bookworm docker.io/library/haproxy:2.6-bookworm \
      docker.io/prom/prometheus:v2.42.0 localhost/bookworm-base:redis-haproxy-prometheus \
      >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
down
say "up: $REPLICAS rankers behind HAProxy, Redis, Prometheus"
compose up -d --scale ranker=$REPLICAS >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; exit 1; }
# podman-compose cannot wait on service_healthy here (no systemd for healthchecks): poll /readyz.
url=http://127.0.0.1:$PORT
for _ in $(seq 120); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$url/readyz" >/dev/null || { compose logs 2>&1 | tail -n 60; exit 1; }
say "ready: $(curl -fsS "$url/readyz")"

# 4. real requests through the published port
# (the baked model reads the generated spec's features by name)
body='{"user_id": "compose-test",
 "user_features": {"user_id": 5, "recent_categories": {"ids": [1, 2, 3], "weights": [3, 1, 1]}},
 "candidates": [{"item_id": "a", "features": {"item_id": 7, "category": 3}, "price": 3.0},
                {"item_id": "b", "features": {"item_id": 8, "intents": [4, 5]}, "price": 9.5}],
 "fusion": {"c": 0.5}}'
rank() { curl -fsS -X POST "$url/rank" -H 'content-type: application/json' -d "$body"; }
first=$(rank)
echo "$first" | grep -q '"user_cache":"miss"' || { echo "first /rank: $first" >&2; exit 1; }
echo "$first" | grep -q '"item_id":"a"' || { echo "first /rank: $first" >&2; exit 1; }
container() {
  podman ps -q --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -n1
}
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
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/rank" \
  -H 'content-type: application/json' -d '{"user_id": 1}')
[ "$code" = 422 ] || { echo "bad request answered $code" >&2; exit 1; }
say "passed: /rank through HAProxy, $keys key(s) in Redis, Redis healthy with its password" \
  "and NOAUTH without it (in its container and over the network), bad input 422"

# 5. the replicas, failover and drain, Prometheus (tests/compose/replicas.py)
"$VENV/bin/python" tests/compose/replicas.py --project "$PROJECT" --replicas $REPLICAS \
  --url "$url" --stats "http://127.0.0.1:$STATS_PORT" \
  --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" --figures "$WORK/figures.json" \
  || { compose logs 2>&1 | tail -n 80; exit 1; }
trap - EXIT
cleanup
say "done"
echo "compose-test: 2 passed, 0 failed (figures: $WORK/figures.json)"
