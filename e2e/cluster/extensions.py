"""Optional APIs on the test control plane, for the tests that need them (separate from
``cluster.py``, which starts the plane itself):

* the Gateway API Inference Extension's ``InferencePool`` CRD (``inference.networking.k8s.io/v1``),
  taken from the extension's Go module (``sigs.k8s.io/gateway-api-inference-extension``, pinned)
  through the Go module proxy once, and cached under ``$KUBEPLEX_CACHE/gateway-api-inference-
  extension/<version>/``;
* Dynamic Resource Allocation fakes: a DeviceClass of a fake driver and ResourceSlices that
  publish fake GPUs on KWOK nodes (``resource.k8s.io/v1``, served by Kubernetes 1.34+): the real
  scheduler allocates claims from them, as it would from a real driver's.

    python e2e/cluster/extensions.py inference-crd     # prints the cached CRD's path
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["DRA_API", "ExtensionError", "device_class", "inference_pool_crd", "resource_slice"]

#: The extension release whose v1 InferencePool CRD the tests install.
GIE_MODULE = "sigs.k8s.io/gateway-api-inference-extension"
GIE_VERSION = "v1.3.0"
GIE_CRD = "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
DRA_API = "resource.k8s.io/v1"
#: Seconds a module download may take (a few MB through the proxy).
DOWNLOAD_TIMEOUT_S = 300


class ExtensionError(Exception):
    """An optional API could not be provided (the message says what to do)."""


def _cache() -> Path:
    return Path(os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex"))


def inference_pool_crd(cache: Path | None = None) -> Path:
    """The cached InferencePool CRD, downloaded through the Go module proxy when absent."""
    root = cache or _cache()
    out = root / "gateway-api-inference-extension" / GIE_VERSION / "inferencepools.yaml"
    if out.exists():
        return out
    go = shutil.which("go")
    if go is None:
        raise ExtensionError(f"no `go` on PATH to download {GIE_MODULE}@{GIE_VERSION} "
                             "through the Go module proxy")
    env = {**os.environ, "GOMODCACHE": str(root / "go" / "mod"), "GOTOOLCHAIN": "local",
           "GOFLAGS": "-mod=mod"}
    proc = subprocess.run([go, "mod", "download", "-json", f"{GIE_MODULE}@{GIE_VERSION}"],
                          capture_output=True, text=True, env=env, cwd=root if root.exists()
                          else None, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    try:
        source = Path(json.loads(proc.stdout)["Dir"]) / GIE_CRD
    except (ValueError, KeyError) as exc:
        raise ExtensionError(f"go mod download {GIE_MODULE}@{GIE_VERSION} failed "
                             f"({proc.returncode}): {proc.stderr.strip() or proc.stdout}") from exc
    if not source.exists():
        raise ExtensionError(f"{GIE_MODULE}@{GIE_VERSION} has no {GIE_CRD}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.rename(out)
    return out


def device_class(name: str, driver: str) -> dict[str, Any]:
    """A DeviceClass selecting every device of ``driver``."""
    return {"apiVersion": DRA_API, "kind": "DeviceClass", "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]}}


def resource_slice(node: str, driver: str, gpus: int, product: str,
                   memory: str = "80Gi") -> dict[str, Any]:
    """One node's fake GPUs, as its DRA driver would publish them (one pool per node)."""
    return {"apiVersion": DRA_API, "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-{driver}"},
            "spec": {"driver": driver, "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": [{"name": f"gpu-{i}",
                                  "attributes": {"productName": {"string": product}},
                                  "capacity": {"memory": {"value": memory}}}
                                 for i in range(gpus)]}}


if __name__ == "__main__":
    if sys.argv[1:] != ["inference-crd"]:
        sys.exit("usage: python e2e/cluster/extensions.py inference-crd")
    try:
        print(inference_pool_crd())
    except ExtensionError as exc:
        sys.exit(f"extensions: {exc}")
