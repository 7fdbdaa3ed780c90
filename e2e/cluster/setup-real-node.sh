#!/usr/bin/env bash
# `make setup` step of the real-pod tier: the Debian packages (containerd, runc, CNI plugins,
# iptables, debootstrap, gcc), the kubelet (build.sh kubelet) and the images (e2e/images),
# each cached; prints SKIPPED with the reason (and succeeds) where no real node can run.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/cluster.py" setup-real-node
