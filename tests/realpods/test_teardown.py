"""After the real-node cluster is down (``make cluster-down``'s code path) nothing of it is
left: no kubelet, containerd or shim process, the kernel settings read as before it started,
no iptables rule, bridge, mount or host folder of its own. Runs last in the tier: it stops the
session's cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from clusterkit import cluster_lib

pytestmark = [pytest.mark.realpods, pytest.mark.slow]


def _cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue  # exited while we looked
    return out


def test_cluster_down_leaves_the_host_as_it_was(host_after_down: Any) -> None:
    real = host_after_down
    # read by the tier itself before the cluster started (not the node's own snapshot)
    assert real.read_sysctls() == real.sysctls_before
    record = real.record
    components = [cluster_lib.Component(**c) for c in record["components"]]
    assert {c.name for c in components} == {"containerd", "kubelet"}
    assert not [c for c in components if cluster_lib.is_alive(c)]
    ours = [c for c in _cmdlines() if str(real.state_dir) in c or "/run/kubeplex/" in c]
    assert not ours, ours
    for path in record["snapshot"]["absent_paths"]:
        assert not Path(path).exists(), path
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True,
                           check=True).stdout
    assert "KUBEPLEX" not in rules and "KUBE-" not in rules and "kubeplex0" not in rules
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    assert "kubeplex0" not in links and "veth" not in links
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(real.state_dir) not in mounts and "/run/netns/cni-" not in mounts
    assert not Path("/run/kubeplex/real-node.json").exists()
