#!/usr/bin/env bash
# Build (once) and cache the binaries of the test control plane:
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes, pinned)
#   etcd                                                       (go.etcd.io/etcd/server/v3, pinned)
#   kwok                                                       (sigs.k8s.io/kwok, pinned)
# from official sources through the Go module proxy. Outputs live outside the clone:
#   $KUBEPLEX_CACHE/k8s/<version>/  $KUBEPLEX_CACHE/etcd/<version>/  $KUBEPLEX_CACHE/kwok/<version>/
# and the Go module and build caches in $KUBEPLEX_CACHE/go/, so a fresh clone on the same
# machine reuses everything. Idempotent: a warm cache returns in well under a second.
#
# Why a wrapper module: k8s.io/kubernetes' published go.mod requires its 31 staging modules
# (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 with `=> ./staging/...` replaces that do not
# apply to a dependency, so we replace each with its published v0.<minor>.<patch> release.
# etcd is built in the same module at the version Kubernetes itself requires (shared deps
# compile once).
set -euo pipefail

# Pinned versions. K8S_VERSION <-> staging v0.35.4; etcd v3.6.5 is what k8s v1.35.4's go.mod
# requires; KWOK v0.8.0 needs Go >= 1.26 (its go.mod says `go 1.26.0`).
K8S_VERSION=1.35.4
ETCD_VERSION=3.6.5
KWOK_VERSION=0.8.0

CACHE=${KUBEPLEX_CACHE:-$HOME/.cache/kubeplex}
K8S_DIR=$CACHE/k8s/$K8S_VERSION
ETCD_DIR=$CACHE/etcd/$ETCD_VERSION
KWOK_DIR=$CACHE/kwok/$KWOK_VERSION
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOPATH=$CACHE/go/path
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local
# Kubernetes' own go.mod pins `godebug default=go1.25`; keep it in the wrapper.

log() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

have_all() {
  for b in "$K8S_DIR/kube-apiserver" "$K8S_DIR/kube-controller-manager" \
           "$K8S_DIR/kube-scheduler" "$ETCD_DIR/etcd" "$KWOK_DIR/kwok" \
           "$KWOK_DIR/stages/node-initialize.yaml"; do
    [[ -x $b || -f $b ]] || return 1
  done
}

# `build.sh` builds the control plane; `build.sh kubelet` only the kubelet of a real node
# (e2e/realnode), in its own cache folder and wrapper module, so the control-plane binaries are
# never rebuilt or touched by it (the shared Go build cache compiles only what the kubelet adds).
MODE=${1:-control-plane}
KUBELET=$CACHE/kubelet/$K8S_VERSION/kubelet
case $MODE in
  control-plane) TIER=cluster
    if have_all; then
      log "cached: k8s v$K8S_VERSION, etcd v$ETCD_VERSION, kwok v$KWOK_VERSION under $CACHE"
      exit 0
    fi ;;
  kubelet) TIER=realpods
    if [[ -x $KUBELET ]]; then log "cached: kubelet v$K8S_VERSION in ${KUBELET%/*}"; exit 0; fi ;;
  *) echo "usage: build.sh [kubelet]" >&2; exit 2 ;;
esac

# Without a Go toolchain or a module proxy nothing can be built here: say so and succeed, so
# `make setup` goes on; the `cluster` tests then skip with the same reason. Any failure past
# this point is a real error.
if ! command -v go >/dev/null; then
  log "SKIPPED: no Go toolchain (need Go >= 1.26); tests marked '$TIER' will skip"
  exit 0
fi
if ! probe=$(go list -m -json "k8s.io/kubernetes@v$K8S_VERSION" 2>&1 >/dev/null); then
  log "SKIPPED: the Go module proxy ($(go env GOPROXY)) does not answer: $probe"
  log "tests marked '$TIER' will skip"
  exit 0
fi

mkdir -p "$CACHE/go"
START=$(date +%s)

# Prints one line every 25 packages compiled (go build -v names each package as it builds).
progress() {
  local what=$1 n=0 line
  while IFS= read -r line; do
    if [[ $line =~ ^[A-Za-z0-9._/~+-]+$ ]]; then  # a package name: count it
      n=$((n + 1)); if (( n % 50 == 0 )); then log "$what: $n packages compiled"; fi
    elif [[ $line != "go: downloading "* ]]; then
      printf '%s\n' "$line"  # diagnostics pass through
    fi
  done
  log "$what: $n packages compiled in total"
}

# ---- KWOK -----------------------------------------------------------------------------
if [[ $MODE == control-plane && ( ! -x $KWOK_DIR/kwok || ! -f $KWOK_DIR/stages/node-initialize.yaml ) ]]; then
  mkdir -p "$KWOK_DIR"
  log "kwok v$KWOK_VERSION: building (go install sigs.k8s.io/kwok/cmd/kwok)"
  tmp=$(mktemp -d)
  GOBIN=$tmp go install -v -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" 2>&1 | progress kwok
  [[ ${PIPESTATUS[0]} -eq 0 ]]
  # v0.8 ships no built-in stages; take its "fast" set (kustomize/stage/fast) from the
  # module source: nodes initialize at once and heartbeat through leases, pods go straight
  # to Running, complete, and are deleted when asked.
  src=$GOMODCACHE/sigs.k8s.io/kwok@v$KWOK_VERSION/kustomize/stage
  mkdir -p "$tmp/stages"
  cp "$src"/node/fast/node-initialize.yaml "$src"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
     "$src"/pod/fast/pod-ready.yaml "$src"/pod/fast/pod-complete.yaml "$src"/pod/fast/pod-delete.yaml \
     "$tmp/stages/"
  chmod -R u+w "$tmp/stages"
  rm -rf "$KWOK_DIR/stages"; mv "$tmp/stages" "$KWOK_DIR/stages"; mv "$tmp/kwok" "$KWOK_DIR/kwok"
  rm -rf "$tmp"
  log "kwok: $KWOK_DIR/kwok ($(ls "$KWOK_DIR/stages" | tr '\n' ' '))"
fi

# ---- Kubernetes + etcd (+ the kubelet) -------------------------------------------------
vpkg=k8s.io/component-base/version
minor=${K8S_VERSION#*.}; minor=${minor%%.*}
K8S_LDFLAGS="-s -w -X $vpkg.gitVersion=v$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
K8S_LDFLAGS+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

# build_k8s WRAPPER_DIR OUT_DIR EXTRA_REQUIRE PACKAGE...: write the wrapper module (staging
# modules replaced by their published versions, the packages as `tool` lines), resolve it
# and compile the packages into OUT_DIR in one `go build`.
build_k8s() {
  local mod=$1 out=$2 extra_require=$3; shift 3
  local staging_version=v0.${K8S_VERSION#*.} upstream_mod staging m p
  mkdir -p "$mod"
  log "kubernetes v$K8S_VERSION: resolving modules in $mod (staging modules -> $staging_version)"
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$upstream_mod")
  {
    echo "module kubeplex.local/controlplane"
    echo
    echo "go 1.25.0"
    echo
    echo "godebug default=go1.25"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes v$K8S_VERSION"
    [[ -z $extra_require ]] || echo "	$extra_require"
    echo ")"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m $staging_version"; done
    echo ")"
    echo
    # Main packages cannot be imported; `tool` lines (Go >= 1.24) make `go mod tidy`
    # resolve exactly their dependencies at the versions required above (never upgrading).
    echo "tool ("
    for p in "$@"; do echo "	$p"; done
    echo ")"
  } > "$mod/go.mod"
  log "kubernetes: $(echo "$staging" | wc -w) staging modules replaced"
  (
    cd "$mod"
    go mod tidy 2>&1 | grep -v '^go: \(downloading\|finding\|found\)' || true
    [[ -s go.sum ]] || { echo "error: go mod tidy failed in $mod" >&2; exit 1; }
    grep -Eq "k8s.io/kubernetes v${K8S_VERSION}( //.*)?$" go.mod \
      || { echo "error: module resolution moved k8s.io/kubernetes off v$K8S_VERSION" >&2; exit 1; }
    log "kubernetes: modules downloaded; compiling $*"
    go build -v -trimpath -tags=selinux,notest -ldflags="$K8S_LDFLAGS" -o "$out/" "$@" 2>&1 | progress kubernetes
    [[ ${PIPESTATUS[0]} -eq 0 ]]
  )
}

if [[ $MODE == kubelet ]]; then
  mkdir -p "${KUBELET%/*}"
  out=$(mktemp -d)
  build_k8s "$CACHE/go/wrapper-kubelet-$K8S_VERSION" "$out" "" k8s.io/kubernetes/cmd/kubelet
  mv "$out/kubelet" "$KUBELET"
  rm -rf "$out"
  "$KUBELET" --version
  log "done in $(( $(date +%s) - START )) s: $KUBELET"
  exit 0
fi

need_k8s=0
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x $K8S_DIR/$b ]] || need_k8s=1
done
[[ -x $ETCD_DIR/etcd ]] || need_k8s=1
if (( need_k8s )); then
  mkdir -p "$K8S_DIR" "$ETCD_DIR"
  out=$(mktemp -d)
  log "kubernetes v$K8S_VERSION: ~2,200 packages to compile (2 idle cores: ~6 min)"
  build_k8s "$CACHE/go/wrapper-k8s-$K8S_VERSION" "$out" "go.etcd.io/etcd/server/v3 v$ETCD_VERSION" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler go.etcd.io/etcd/server/v3
  for b in kube-apiserver kube-controller-manager kube-scheduler; do mv "$out/$b" "$K8S_DIR/$b"; done
  mv "$out/v3" "$ETCD_DIR/etcd" 2>/dev/null || mv "$out/server" "$ETCD_DIR/etcd" 2>/dev/null || mv "$out"/* "$ETCD_DIR/etcd"
  rm -rf "$out"
  "$K8S_DIR/kube-apiserver" --version
  "$ETCD_DIR/etcd" --version | sed -n 1p
fi

have_all || { echo "error: build finished but some binaries are missing" >&2; exit 1; }
log "done in $(( $(date +%s) - START )) s: $K8S_DIR $ETCD_DIR $KWOK_DIR"
