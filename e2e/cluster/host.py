"""The host settings a real node changes (realnode.py), recorded before it starts and put back
after it stops: sysctls, iptables and ip6tables rules and chains, host paths and the kubelet's
cgroups, mounts under them. Standard library only; what is recorded is plain data (it goes
into realnode's lock record as JSON).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CGROUP_ROOT", "HOST_PATHS", "SYSCTLS", "HostSnapshot", "iptables_added", "restore"]

# Kernel settings the kubelet (unless protectKernelDefaults) and the bridge plugin change.
SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
           "net.ipv6.conf.all.forwarding", "net.bridge.bridge-nf-call-iptables",
           "net.bridge.bridge-nf-call-ip6tables")
# Host paths the kubelet, containerd, runc and CNI use whatever their configured roots.
HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni",
              "/run/netns", "/run/containerd", "/var/lib/containerd", "/opt/containerd",
              "/etc/cni", "/opt/cni", "/run/runc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"  # the kubelet's QoS cgroup (cgroupfs driver)



def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _iptables_tools() -> list[str]:
    return [t for t in ("iptables", "ip6tables") if shutil.which(f"{t}-save")]


def _iptables_save(tool: str) -> str:
    proc = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _cgroup_dirs() -> list[Path]:
    """Where the kubelet's kubepods cgroup goes in each mounted hierarchy (v1) or v2."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / KUBEPODS]
    return [d / KUBEPODS for d in sorted(CGROUP_ROOT.iterdir()) if d.is_dir()
            and not d.is_symlink()]


@dataclass
class HostSnapshot:
    """The host settings a real node changes, as they were before it started."""

    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)
    absent_paths: list[str] = field(default_factory=list)
    absent_cgroups: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            sysctls={n: _sysctl_path(n).read_text().strip() for n in SYSCTLS
                     if _sysctl_path(n).exists()},
            iptables={t: _iptables_save(t) for t in _iptables_tools()},
            absent_paths=[p for p in HOST_PATHS if not os.path.lexists(p)],
            absent_cgroups=[str(d) for d in _cgroup_dirs() if not d.exists()],
        )

    def differences(self) -> list[str]:
        """What differs from the host now (empty once everything is restored)."""
        now = HostSnapshot.take()
        out = [f"sysctl {n} = {now.sysctls.get(n)} (was {v})"
               for n, v in self.sysctls.items() if now.sysctls.get(n) != v]
        for tool, saved in self.iptables.items():
            added, chains = iptables_added(saved, now.iptables.get(tool, ""))
            out += [f"{tool} -t {table}: {' '.join(rule)}" for table, rule in added]
            out += [f"{tool} -t {table}: chain {chain}" for table, chain in chains]
        out += [f"{p} exists" for p in self.absent_paths if os.path.lexists(p)]
        out += [f"cgroup {c} exists" for c in self.absent_cgroups if os.path.exists(c)]
        return out


def _parse_save(text: str) -> dict[str, tuple[dict[str, str], list[tuple[str, ...]]]]:
    """iptables-save output -> table -> (chain -> policy, rules as argument tuples)."""
    tables: dict[str, tuple[dict[str, str], list[tuple[str, ...]]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = ({}, [])
        elif line.startswith(":") and table:
            name, policy = line[1:].split()[:2]
            tables[table][0][name] = policy
        elif line.startswith("-A ") and table:
            tables[table][1].append(tuple(shlex.split(line)[1:]))
    return tables


def iptables_added(before: str, after: str
                    ) -> tuple[list[tuple[str, tuple[str, ...]]], list[tuple[str, str]]]:
    """Rules (table, args) and user-defined chains (table, name) in ``after`` that ``before``
    lacks."""
    old, new = _parse_save(before), _parse_save(after)
    rules: list[tuple[str, tuple[str, ...]]] = []
    chains: list[tuple[str, str]] = []
    for table, (policies, table_rules) in new.items():
        old_policies, old_rules = old.get(table, ({}, []))
        extra = Counter(table_rules) - Counter(old_rules)  # duplicates count
        for rule in table_rules:
            if extra[rule] > 0:
                extra[rule] -= 1
                rules.append((table, rule))
        # user-defined chains ("-" policy); built-in ones exist with their table
        chains += [(table, c) for c, policy in policies.items()
                   if policy == "-" and c not in old_policies]
    return rules, chains


def _restore_iptables(snapshot: HostSnapshot, say: Callable[[str], None]) -> None:
    for tool, saved in snapshot.iptables.items():
        rules, chains = iptables_added(saved, _iptables_save(tool))
        for table, rule in rules:  # jumps into added chains go with these
            subprocess.run([tool, "-w", "-t", table, "-D", *rule], capture_output=True,
                           check=False)
        for table, chain in chains:
            subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True,
                           check=False)
            subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True,
                           check=False)
        if rules or chains:
            say(f"{tool}: removed {len(rules)} rules and {len(chains)} chains added since up")


def _mounts_under(prefixes: Sequence[str]) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            points.append(point)
    return sorted(points, key=len, reverse=True)  # deepest first


def _unmount(prefixes: Sequence[str]) -> None:
    for point in _mounts_under(prefixes):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # cgroup folders go with rmdir once empty of tasks


def restore(snapshot: HostSnapshot, node_dir: Path, bridge: str,
            say: Callable[[str], None]) -> None:
    """Put the host back as ``snapshot`` found it: unmount what is mounted under the paths that
    did not exist and under ``node_dir``, delete ``bridge``, the iptables rules and chains
    added since, write the sysctls back, remove the cgroups and paths that did not exist."""
    _unmount([*snapshot.absent_paths, str(node_dir)])
    subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
    _restore_iptables(snapshot, say)
    for name, value in snapshot.sysctls.items():
        path = _sysctl_path(name)
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value + "\n")
    for c in snapshot.absent_cgroups:
        _remove_cgroup_tree(Path(c))
    for p in snapshot.absent_paths:
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
    if left := snapshot.differences():
        say("could not restore: " + "; ".join(left))
