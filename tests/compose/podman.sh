# Sourced by tests/compose/stack.sh (make compose-test) and gpu/image.sh (make gpu-image): what
# building the project's images with Podman needs on these machines, where no Docker engine runs
# and no image registry can be reached.
#
#   podman_ready          Podman and its helpers installed where missing, podman-compose into
#                         $VENV, the containers.conf these machines need (runc, cgroupfs, ulimits
#                         under the hard limits), and stand-in base images for the Dockerfile's
#                         python:3.11-slim-bookworm and compose's redis, haproxy and prometheus
#                         images: a debootstrap of Debian bookworm off the machine's configured
#                         apt mirror, with those packages
#   build_image TAG ARGS  `podman build` of the project's Dockerfile, target runtime, with the
#                         host's CA bundle, pip configuration and local wheels mounted in for pip;
#                         ARGS go to podman build (e.g. --build-arg EXTRA=gpu); log in $WORK
#
# Expects: the repository root as the working directory, WORK, VENV, and a `say` function.

podman_ready() {
  local need=() tool
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
  cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  export CONTAINERS_CONF=$WORK/containers.conf

  # The tag names what the image holds: a machine with an older stand-in builds this one.
  local base=localhost/bookworm-base:redis-haproxy-prometheus
  if ! podman image exists "$base"; then
    local mirror
    mirror=$(grep -rhE '^(deb|URIs:) ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
      | grep -E '/debian/?( |$)' | grep -v security | head -n1 | awk '{print $2}' || true)
    [ -n "$mirror" ] || { echo "no Debian mirror in the apt sources" >&2; return 1; }
    say "debootstrap bookworm (minbase + python3, redis, haproxy, prometheus)"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,redis-server,redis-tools,haproxy,prometheus,ca-certificates \
      bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap.log"; return 1; }
    tar -C "$WORK/rootfs" -c . | podman import - "$base" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
  local image
  for image in library/python:3.11-slim-bookworm library/redis:7-bookworm \
    library/haproxy:2.6-bookworm prom/prometheus:v2.42.0; do
    podman tag "$base" "docker.io/$image"
  done
}

build_image() {
  local tag=$1 mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
  shift
  [ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  [ -d /opt/wheels ] && mounts+=(-v /opt/wheels:/opt/wheels:ro)
  say "podman build $tag (target runtime) $*"
  podman build --network host --pull=never "${mounts[@]}" --target runtime -t "$tag" "$@" . \
    >"$WORK/build-${tag//[:\/]/-}.log" 2>&1 \
    || { tail -n 40 "$WORK/build-${tag//[:\/]/-}.log"; return 1; }
}
