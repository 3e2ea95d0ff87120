#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's `kubernetes`
# source package (it vendors every Go dependency, so the build is offline: GOPROXY=off) and cache
# them in ${MESHWARD_KUBE_DIR:-$HOME/.cache/meshward/kube}/bin. The tests in tests/kube start a
# real API server from there. Idempotent: a no-op when both binaries are cached. Needs root and
# apt-get; without them it prints a note and exits 0 (the tests that need the server then skip).
# Facts behind each step: docs/kubernetes.md.
set -euo pipefail

KUBE_DIR="${MESHWARD_KUBE_DIR:-$HOME/.cache/meshward/kube}"
BIN_DIR="$KUBE_DIR/bin"
VERSION=v1.20.2
BINARIES=(kube-apiserver kube-controller-manager)

say() { echo "kube-apiserver.sh: $*"; }

have_all() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
  command -v etcd >/dev/null || return 1
}

if have_all; then
  say "cached in $BIN_DIR (nothing to do)"
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  say "note: not root or no apt-get; not building a Kubernetes API server (tests/kube will skip)"
  exit 0
fi

start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
need=()
for p in golang-go rsync golang-github-modern-go-reflect2-dev etcd-server; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" ]]; then
  say "cached in $BIN_DIR (installed missing system packages only)"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshward-kube-build.XXXXXX")"
export GOCACHE="$WORK/gocache" GOPATH="$WORK/gopath" GOFLAGS=-mod=vendor GOPROXY=off
# The build tree (~1 GB of objects) and the Go build cache (~1.1 GB) go when we finish, failed or not.
trap 'rm -rf "$WORK"' EXIT

# A private apt configuration for the source package: the system's sources are never touched.
APT="$WORK/apt"
mkdir -p "$APT/sources" "$APT/lists/partial" "$APT/cache/archives/partial"
cat >"$APT/sources/kubernetes-src.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/sources"
  -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache")
say "fetching Debian bookworm's kubernetes source package"
apt-get "${apt_opts[@]}" update -qq
(cd "$WORK" && apt-get "${apt_opts[@]}" source --download-only -qq kubernetes >/dev/null)
orig=$(ls "$WORK"/kubernetes_*.orig.tar.gz | head -n1)
say "unpacking $(basename "$orig")"
tar -xzf "$orig" -C "$WORK"
SRC_DIR=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)

# The vendored reflect2 1.0.1 crashes under Go >= 1.18 (fatal error: fault in mapiterinit on the
# first custom-resource create); Debian's 1.0.2 files are a drop-in replacement.
R2="$SRC_DIR/vendor/github.com/modern-go/reflect2"
rm -f "$R2"/*.go "$R2"/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$R2"/
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$R2"/ 2>/dev/null || true
rm -f "$R2"/*_test.go

cd "$SRC_DIR"
for b in "${BINARIES[@]}"; do
  say "building cmd/$b ($(go version | awk '{print $3}'))"
  # make, not go build: make generates the OpenAPI definitions the server needs.
  make WHAT="cmd/$b" GOLDFLAGS='-s -w' KUBE_GIT_VERSION="$VERSION" \
    KUBE_GIT_TREE_STATE=clean GOPROXY=off >"$WORK/make-$b.log" 2>&1 || {
    tail -n 40 "$WORK/make-$b.log"; say "build of $b failed"; exit 1; }
done

mkdir -p "$BIN_DIR"
for b in "${BINARIES[@]}"; do
  install -m 0755 "_output/bin/$b" "$BIN_DIR/$b.tmp"
  mv -f "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
done
cd /
say "installed ${BINARIES[*]} $VERSION into $BIN_DIR in $((SECONDS - start)) s"
