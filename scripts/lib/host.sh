# Shell helpers for the scripts that set up this machine before they run
# something in containers (scripts/sam-local.sh, scripts/newcomer-check.sh):
# root commands through sudo, Debian packages, dockerd, qemu's binfmt entry,
# and base images built locally from a Debian rootfs, because no container
# registry is assumed reachable (only the package registries).

# as_root CMD...: runs CMD as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# need_packages PKG...: installs the Debian packages that are missing.
need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || {
    echo "needs the Debian packages ${missing[*]} (or their equivalents): install them and run this again" >&2
    return 1
  }
  echo "installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# docker_up: docker.io installed and its daemon answering. A daemon started
# here keeps running afterwards (like the service it normally is).
#
# It runs without the userland proxy: a published port then accepts only once
# the container's own process listens. With the proxy, the host port accepts
# at once, `sam local invoke` posts its event as soon as it does, and the
# runtime emulator (an arm64 program under qemu) is often not listening yet:
# SAM reports "No response from invoke container" (measured: 32 of 52
# invocations in one run; none without the proxy).
DOCKERD_LOG=/var/log/dockerd.log
docker_up() {
  if ! command -v dockerd >/dev/null && ! [ -x /usr/sbin/dockerd ]; then
    need_packages docker.io
  fi
  restart_own_dockerd_without_proxy
  docker info >/dev/null 2>&1 && return 0
  if ! as_root docker info >/dev/null 2>&1; then
    echo "starting dockerd (log: $DOCKERD_LOG)" >&2
    as_root sh -c "nohup setsid /usr/sbin/dockerd --userland-proxy=false >$DOCKERD_LOG 2>&1 </dev/null &"
    local _
    for _ in $(seq 1 60); do
      as_root docker info >/dev/null 2>&1 && break
      sleep 1
    done
    as_root docker info >/dev/null 2>&1 || {
      echo "dockerd did not start; see /var/log/dockerd.log" >&2
      return 1
    }
  fi
  # A user outside the docker group still reaches it through sudo.
  docker info >/dev/null 2>&1 || DOCKER_SUDO=1
}

# A dockerd that this script started earlier with the userland proxy on (its
# output goes to our log) is restarted without it. A daemon run by systemd or
# by anyone else is left alone: `sam-local.sh` then retries the invocations
# that the proxy answered too early.
restart_own_dockerd_without_proxy() {
  local pid
  pid=$(pgrep -o -x dockerd 2>/dev/null) || return 0
  as_root cat "/proc/$pid/cmdline" 2>/dev/null | tr '\0' ' ' | grep -q -- '--userland-proxy=false' && return 0
  [ "$(as_root readlink "/proc/$pid/fd/1" 2>/dev/null)" = "$DOCKERD_LOG" ] || return 0
  echo "restarting dockerd (started here earlier) without the userland proxy" >&2
  as_root kill "$pid"
  local _
  for _ in $(seq 1 30); do
    as_root kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
}

# dk ARGS...: docker, through sudo when the user cannot reach the socket.
dk() {
  if [ -n "${DOCKER_SUDO:-}" ]; then as_root docker "$@"; else docker "$@"; fi
}

# binfmt_arm64: arm64 binaries run on this host (natively, or through
# qemu-user-static registered with the F flag, so that containers, which do
# not see the host's /usr/libexec, can use it too).
binfmt_arm64() {
  [ "$(uname -m)" = aarch64 ] && return 0
  need_packages qemu-user-static
  if ! [ -e /proc/sys/fs/binfmt_misc/register ]; then
    as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  if [ -e "$entry" ] && ! grep -q '^flags:.*F' "$entry"; then
    # Registered without F: the interpreter would not be found in containers.
    as_root sh -c "echo -1 > $entry"
  fi
  if ! [ -e "$entry" ]; then
    as_root sh -c 'cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register'
  fi
  grep -q '^enabled' "$entry" || { echo "qemu-aarch64 binfmt entry is not enabled" >&2; return 1; }
}

# rootfs_image NAME ARCH PACKAGES: prints the name of a local image holding a
# Debian 12 minbase rootfs for ARCH (amd64|arm64) with PACKAGES (comma
# separated), building it with mmdebstrap only when no image of exactly these
# inputs exists (the tag is a hash of them). Builds take minutes; reuse is
# instant.
rootfs_image() {
  local name=$1 arch=$2 packages=$3 dockerfile hash image dir
  dockerfile=$'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n'
  hash=$(printf '%s\n' 1 bookworm minbase "$arch" "$packages" "$dockerfile" | sha256sum | cut -c1-12)
  image="$name-$hash:$arch"
  if dk image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    return 0
  fi
  need_packages mmdebstrap
  [ "$arch" = arm64 ] && binfmt_arm64
  dir=$(mktemp -d "${TMPDIR:-/var/tmp}/tenant-users-rootfs.XXXXXX")
  echo "building $image (mmdebstrap $arch: a few minutes, once)" >&2
  local start=$SECONDS
  if ! as_root mmdebstrap --quiet --arch="$arch" --variant=minbase --include="$packages" \
    bookworm "$dir/rootfs.tar" >&2; then
    as_root rm -rf "$dir"
    return 1
  fi
  printf '%s' "$dockerfile" >"$dir/Dockerfile"
  # The legacy builder honours --platform for a FROM scratch image; plain
  # `docker import` labels everything amd64, and SAM would then try to pull.
  if ! DOCKER_BUILDKIT=0 dk build -q --platform "linux/$arch" -t "$image" "$dir" >/dev/null 2>"$dir/build.log"; then
    cat "$dir/build.log" >&2
    as_root rm -rf "$dir"
    return 1
  fi
  as_root rm -rf "$dir"
  echo "built $image in $((SECONDS - start)) s" >&2
  echo "$image"
}

# layered_image BASE DOCKERFILE_LINES: prints the name of BASE with the given
# Dockerfile lines on top (built once, tagged by a hash of both).
layered_image() {
  local base=$1 lines=$2 hash image dir
  hash=$(printf '%s\n' "$base" "$lines" | sha256sum | cut -c1-12)
  image="${base%%:*}-$hash:${base##*:}"
  if ! dk image inspect "$image" >/dev/null 2>&1; then
    dir=$(mktemp -d)
    printf 'FROM %s\n%s\n' "$base" "$lines" >"$dir/Dockerfile"
    DOCKER_BUILDKIT=0 dk build -q --platform "linux/${base##*:}" -t "$image" "$dir" >/dev/null 2>"$dir/build.log" \
      || { cat "$dir/build.log" >&2; rm -rf "$dir"; return 1; }
    rm -rf "$dir"
  fi
  echo "$image"
}
