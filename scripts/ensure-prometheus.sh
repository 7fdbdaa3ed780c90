#!/usr/bin/env bash
# Install Prometheus and Alertmanager (with promtool and amtool) from Debian, if missing.
#
# The tests run the binaries directly on 127.0.0.1 with temp dirs (tests/promstack.py); no
# service is started. --no-install-recommends keeps it to the binaries (~8 s, ENV.md).
# Idempotent: returns at once when all four commands exist.
set -euo pipefail

need=(prometheus prometheus-alertmanager promtool amtool)
missing=0
for cmd in "${need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing=1
done
if [[ $missing -eq 0 ]]; then
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt has none (a fresh machine); otherwise use them.
if ! apt-cache show prometheus-alertmanager >/dev/null 2>&1; then
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
for cmd in "${need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "ensure-prometheus: $cmd still missing after apt-get install" >&2
    exit 1
  fi
done
