"""Build kubeplex's container images on a machine with no container engine.

    python e2e/images/build.py [--import-address SOCKET] [NAME ...]

The recipe is the Dockerfile itself: :func:`parse_dockerfile` reads it and :func:`build_image`
executes its instructions the way ``docker build`` would (``WORKDIR``, ``COPY`` honouring the
Dockerfile's ``.dockerignore``, ``RUN`` under ``/bin/sh -c`` in a chroot, ``ENV``, ``USER``,
``EXPOSE``, ``ENTRYPOINT``, ``CMD``), so the Dockerfiles stay the one description of each image.
Only the base image differs: there is no registry to pull ``python:3.11-slim-bookworm`` from,
so :data:`BASES` rebuilds the equivalent from Debian packages (``debootstrap --variant=minbase``
plus a Python whose ``pip`` installs into ``/usr/local``, as the official image's does). An
instruction or base this builder does not know is an error that names it.

Output: a docker-archive tar (``docker save`` format: the base layer, the layer the
Dockerfile's steps added, the image config) per image under
``~/.cache/kubeplex/images/<name>/<hash>.tar``, where the hash covers the Dockerfile, the
files its ``COPY`` steps read, the base recipe and this builder; a warm cache returns at
once. ``--import-address`` then loads them into a containerd (``ctr images import``) in the
``k8s.io`` namespace the kubelet uses. :func:`build_pause` builds the pod sandbox ("pause")
image from Kubernetes' own ``pause.c`` with ``gcc -static``.

Needs root (chroot, mount namespaces), ``debootstrap``, ``unshare`` and ``gcc`` (the real-node
setup, e2e/realnode, installs them), and the Python package index for ``RUN pip install``
(the host's CA bundle and proxy settings are passed to that step only, never into the image).
Standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BASES",
    "IMAGES",
    "PAUSE",
    "BaseRecipe",
    "Dockerfile",
    "ImageBuildError",
    "ImageSpec",
    "Instruction",
    "build_all",
    "build_image",
    "build_pause",
    "cache_dir",
    "import_archives",
    "main",
    "parse_dockerfile",
    "source_hash",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Kubernetes' pod sandbox program, from the k8s.io/kubernetes module e2e/cluster/build.sh
# downloads (same version as the control plane).
PAUSE_SOURCE = "build/pause/linux/pause.c"
# Image references are local names no registry serves (the node never pulls them).
REGISTRY = "kubeplex.local"
# How many archives of one image the cache keeps (older hashes are deleted).
KEEP_ARCHIVES = 2
# The containerd namespace the kubelet's CRI plugin uses.
CRI_NAMESPACE = "k8s.io"
# The host's trust store: RUN steps get it at /mnt/kubeplex-build/ca.crt (TLS to the package
# index may be intercepted here) and nothing of it stays in the image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_MOUNT = "/mnt"
# Host variables RUN steps inherit (proxies, package index settings): build-time only.
PASSTHROUGH_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "NO_PROXY", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST",
                   "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


try:  # rooted at kubeplex's exception tree when kubeplex is installed (the venv)
    from kubeplex.errors import KubeplexError as _ErrorBase
except ImportError:  # pragma: no cover - the script also runs with a bare python3
    _ErrorBase = Exception  # type: ignore[assignment,misc]


class ImageBuildError(_ErrorBase):
    """An image cannot be built; the message names the step or the missing tool."""


# --------------------------------------------------------------------------------------
# What is built.


@dataclass(frozen=True)
class BaseRecipe:
    """How a registry base image is rebuilt from Debian packages.

    ``python_prefix``: where a venv of Debian's Python goes so that ``python3``/``pip`` on
    ``PATH`` install into it, as in the official ``python`` images (Debian's own interpreter
    refuses ``pip install`` outside a venv, PEP 668)."""

    suite: str
    packages: tuple[str, ...]
    python_prefix: str
    env: tuple[tuple[str, str], ...]

    def key(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


BASES: dict[str, BaseRecipe] = {
    # Debian 12's python3 is 3.11, the version the official image's tag names.
    "python:3.11-slim-bookworm": BaseRecipe(
        suite="bookworm", packages=("python3", "python3-venv", "ca-certificates"),
        python_prefix="/usr/local",
        env=(("PATH", DEFAULT_PATH), ("LANG", "C.UTF-8"))),
}


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile (relative to the repository root) and local reference."""

    name: str
    dockerfile: str
    ref: str


IMAGES: dict[str, ImageSpec] = {spec.name: spec for spec in (
    ImageSpec("kubeplex", "operator/Dockerfile", f"{REGISTRY}/kubeplex:dev"),
    ImageSpec("kubeplex-runtime-sim", "runtime_image/Dockerfile.sim",
              f"{REGISTRY}/kubeplex-runtime:dev-sim"),
)}
PAUSE = ImageSpec("pause", PAUSE_SOURCE, f"{REGISTRY}/pause:dev")


def cache_dir() -> Path:
    root = Path(os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex"))
    return root / "images"


def _say(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------
# Dockerfile parsing.


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: tuple[Instruction, ...]
    ignore: tuple[str, ...]  # .dockerignore patterns (with "!" exceptions)

    def base(self) -> str:
        froms = [i for i in self.instructions if i.keyword == "FROM"]
        if len(froms) != 1:
            raise ImageBuildError(f"{self.path}: {len(froms)} FROM lines; this builder "
                                  "handles single-stage Dockerfiles only")
        return _substitute(froms[0].args.split()[0], self.build_args(), froms[0], self.path)

    def build_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        for i in self.instructions:
            if i.keyword == "ARG":
                name, _, default = i.args.partition("=")
                args[name.strip()] = default.strip()
        return args

    def copy_sources(self) -> list[str]:
        return [src for i in self.instructions if i.keyword == "COPY"
                for src in _copy_args(i, self.path)[0]]


SUPPORTED = ("FROM", "ARG", "WORKDIR", "COPY", "RUN", "ENV", "USER", "EXPOSE", "ENTRYPOINT",
             "CMD", "LABEL")


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions of a Dockerfile (continuation lines joined, comments dropped) and the
    patterns of its ``<Dockerfile>.dockerignore`` (else the context root's ``.dockerignore``)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword not in SUPPORTED:
            raise ImageBuildError(f"{path}:{start}: {keyword} is not handled by "
                                  f"e2e/images/build.py (it knows {', '.join(SUPPORTED)})")
        instructions.append(Instruction(keyword, args.strip(), start))
    if pending:
        raise ImageBuildError(f"{path}: the last instruction ends with a line continuation")
    ignore_file = path.with_name(path.name + ".dockerignore")
    if not ignore_file.exists():
        ignore_file = REPO / ".dockerignore"
    patterns: tuple[str, ...] = ()
    if ignore_file.exists():
        patterns = tuple(ln.strip() for ln in ignore_file.read_text().splitlines()
                         if ln.strip() and not ln.strip().startswith("#"))
    return Dockerfile(path, tuple(instructions), patterns)


def _substitute(text: str, env: Mapping[str, str], at: Instruction, path: Path) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise ImageBuildError(f"{path}:{at.line}: ${name} is not set by an ARG or ENV")
        return env[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def _copy_args(i: Instruction, path: Path) -> tuple[list[str], str]:
    words = shlex.split(i.args)
    if any(w.startswith("--") for w in words):
        raise ImageBuildError(f"{path}:{i.line}: COPY flags ({i.args}) are not handled")
    if len(words) < 2:
        raise ImageBuildError(f"{path}:{i.line}: COPY needs a source and a destination")
    return words[:-1], words[-1]


def _exec_form(i: Instruction, path: Path) -> list[str]:
    if i.args.startswith("["):
        try:
            argv = json.loads(i.args)
        except json.JSONDecodeError as e:
            raise ImageBuildError(f"{path}:{i.line}: {i.keyword} is not valid JSON: {e}") from None
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ImageBuildError(f"{path}:{i.line}: {i.keyword} must be a list of strings")
        return argv
    return ["/bin/sh", "-c", i.args]


def _ignored(rel: str, patterns: Sequence[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = rel.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        regex = _pattern_regex(pat.strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over "/" paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _context_files(context: Path, sources: Sequence[str], patterns: Sequence[str]
                   ) -> Iterator[tuple[str, Path]]:
    """(path relative to the context, absolute path) of every file a COPY source names."""
    for src in sources:
        top = (context / src).resolve()
        if not top.is_relative_to(context):
            raise ImageBuildError(f"COPY source {src!r} is outside the build context")
        if not top.exists():
            raise ImageBuildError(f"COPY source {src!r} does not exist in {context}")
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*"))
        for p in paths:
            rel = p.relative_to(context).as_posix()
            if (p.is_file() or p.is_symlink()) and not _ignored(rel, patterns):
                yield rel, p


def source_hash(spec: ImageSpec, context: Path = REPO) -> str:
    """What the image is made of: this builder, the Dockerfile and its ignore patterns, the
    base recipe, and the content of every file the COPY steps read."""
    dockerfile = parse_dockerfile(context / spec.dockerfile)
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(dockerfile.path.read_bytes())
    h.update("\n".join(dockerfile.ignore).encode())
    recipe = BASES.get(dockerfile.base())
    h.update(repr(recipe).encode())
    for rel, p in _context_files(context, dockerfile.copy_sources(), dockerfile.ignore):
        h.update(rel.encode() + b"\0")
        h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------
# Root filesystems and layers.


def _run(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None,
         log: Path | None = None) -> None:
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        proc = subprocess.run(list(argv), env=dict(env) if env is not None else None,
                              stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                              check=False)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        detail = _tail(log) if log else (proc.stderr or b"").decode(errors="replace")[-3000:]
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}):\n{detail}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _require_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building images needs root (chroot and mount namespaces)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ImageBuildError(f"missing tools: {', '.join(missing)} (apt-get install "
                              f"{' '.join(missing)}; `make images` installs them)")


def _apt_mirror() -> str:
    """The Debian mirror the host's apt uses (so debootstrap goes where apt may go)."""
    for source in [Path("/etc/apt/sources.list"),
                   *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]:
        if not source.exists():
            continue
        text = source.read_text()
        m = (re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M)
             or re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s", text, re.M))
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


@dataclass
class _Base:
    rootfs: Path
    layer: Path
    diff_id: str


def _ensure_base(name: str, recipe: BaseRecipe) -> _Base:
    """The base root filesystem and its layer tar, built once per recipe."""
    root = cache_dir() / "base" / recipe.key()
    done = root / "diff_id"
    if done.exists():
        return _Base(root / "rootfs", root / "layer.tar", done.read_text().strip())
    _require_tools("debootstrap", "unshare", "chroot")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    log = root / "build.log"
    rootfs = root / "rootfs"
    mirror = _apt_mirror()
    _say(f"base {name}: debootstrap --variant=minbase {recipe.suite} + "
         f"{' '.join(recipe.packages)} from {mirror} (1-2 min; log {log})")
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}",
          recipe.suite, str(rootfs), mirror], "debootstrap", log=log)
    # As the official slim images: no package lists or downloaded .debs, an empty
    # resolv.conf (the container runtime mounts its own), and Python's pip in a venv.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / junk).glob("*"):
            if p.is_file():
                p.unlink()
    (rootfs / "etc/resolv.conf").write_text("")
    _chroot_run(rootfs, f"python3 -m venv {shlex.quote(recipe.python_prefix)}",
                dict(recipe.env), "/", "0", log, "python venv")
    _say(f"base {name}: writing its layer")
    diff_id = _write_layer(root / "layer.tar", rootfs, sorted(_scan(rootfs)), [])
    done.write_text(diff_id + "\n")
    return _Base(rootfs, root / "layer.tar", diff_id)


_CHROOT_SCRIPT = """
set -e
root=$1 workdir=$2 user=$3 command=$4
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
mount --bind "$KUBEPLEX_BUILD_DIR" "$root{mount}"
exec chroot --userspec="$user" "$root" /bin/sh -c 'cd "$1" && eval "$2"' sh "$workdir" "$command"
"""


def _chroot_run(rootfs: Path, command: str, env: Mapping[str, str], workdir: str, user: str,
                log: Path, what: str) -> None:
    """``/bin/sh -c command`` inside the root filesystem, in a private mount namespace (its
    /proc, /dev, resolv.conf and build mounts vanish with it), with the host's CA bundle and
    proxy settings for this step only."""
    with tempfile.TemporaryDirectory(prefix="kubeplex-build-") as build_dir:
        ca = Path(build_dir) / "ca.crt"
        if HOST_CA_BUNDLE.exists():
            shutil.copy(HOST_CA_BUNDLE, ca)
        step_env = {**{k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}, **env}
        if ca.exists():
            inside = f"{BUILD_MOUNT}/ca.crt"
            step_env.update(PIP_CERT=inside, SSL_CERT_FILE=inside, REQUESTS_CA_BUNDLE=inside)
        host_env = {"PATH": os.environ.get("PATH", DEFAULT_PATH),
                    "KUBEPLEX_BUILD_DIR": build_dir}
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                _CHROOT_SCRIPT.format(mount=BUILD_MOUNT), "sh", str(rootfs), workdir, user,
                " ".join(f"export {k}={shlex.quote(v)};" for k, v in step_env.items())
                + " " + command]
        _run(argv, what, env=host_env, log=log)


# One entry per path: what decides whether a layer must carry it again.
_Meta = tuple[int, int, int, int, int, str]


def _scan(rootfs: Path) -> Iterator[tuple[str, _Meta]]:
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            yield (os.path.relpath(full, rootfs),
                   (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, link))


def _write_layer(path: Path, rootfs: Path, entries: Sequence[tuple[str, _Meta]],
                 whiteouts: Sequence[str]) -> str:
    """A layer tar of the given paths plus whiteouts; returns its diff id (sha256)."""
    def owner_ids_only(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""  # numeric ids: the host's user names mean nothing here
        return info

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, _meta in entries:
            tar.add(rootfs / rel, arcname=rel, recursive=False, filter=owner_ids_only)
        for rel in whiteouts:
            parent, _, name = rel.rpartition("/")
            info = tarfile.TarInfo(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
            tar.addfile(info, io.BytesIO(b""))
    return "sha256:" + _sha256(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _layer_diff(before: Mapping[str, _Meta], after: Mapping[str, _Meta]
                ) -> tuple[list[tuple[str, _Meta]], list[str]]:
    """Paths new or changed since ``before`` and whiteouts for those removed (a removed
    folder needs one whiteout, not one per file in it)."""
    changed = sorted((p, m) for p, m in after.items() if before.get(p) != m)
    removed = sorted(p for p in before if p not in after)
    whiteouts: list[str] = []
    for p in removed:
        if not any(p.startswith(w + "/") for w in whiteouts):
            whiteouts.append(p)
    return changed, whiteouts


# --------------------------------------------------------------------------------------
# Images.


@dataclass
class _Config:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)


def _apply(dockerfile: Dockerfile, rootfs: Path, config: _Config, context: Path,
           log: Path) -> None:
    """Run every instruction after FROM against the root filesystem."""
    args = dockerfile.build_args()
    path = dockerfile.path
    for i in dockerfile.instructions:
        if i.keyword in ("FROM", "ARG"):
            continue
        scope = {**args, **config.env}
        config.history.append(f"{i.keyword} {i.args}")
        if i.keyword == "WORKDIR":
            config.workdir = os.path.join(config.workdir, _substitute(i.args, scope, i, path))
            (rootfs / config.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif i.keyword == "COPY":
            sources, dest = _copy_args(i, path)
            _copy(context, [_substitute(s, scope, i, path) for s in sources],
                  os.path.join(config.workdir, _substitute(dest, scope, i, path)),
                  rootfs, dockerfile.ignore)
        elif i.keyword == "RUN":
            _say(f"  {path.name}:{i.line} RUN {i.args[:70]}...")
            user = config.user or "0"
            if not re.fullmatch(r"\d+(:\d+)?", user):
                raise ImageBuildError(f"{path}:{i.line}: RUN as user {user!r}: use a numeric "
                                      "USER before RUN (names would resolve on the host)")
            uid, _, gid = user.partition(":")
            _chroot_run(rootfs, i.args, {**args, **config.env}, config.workdir,
                        f"{uid}:{gid or uid}", log, f"{path}:{i.line} RUN")
        elif i.keyword == "ENV":
            config.env.update(_pairs(i, path, scope))
        elif i.keyword == "LABEL":
            config.labels.update(_pairs(i, path, scope))
        elif i.keyword == "USER":
            config.user = _substitute(i.args, scope, i, path)
        elif i.keyword == "EXPOSE":
            config.ports += [p if "/" in p else f"{p}/tcp" for p in i.args.split()]
        elif i.keyword == "ENTRYPOINT":
            config.entrypoint = _exec_form(i, path)
            config.cmd = None  # Docker: a new ENTRYPOINT resets an inherited CMD
        elif i.keyword == "CMD":
            config.cmd = _exec_form(i, path)


def _pairs(i: Instruction, path: Path, scope: Mapping[str, str]) -> dict[str, str]:
    words = shlex.split(i.args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return {words[0]: _substitute(" ".join(words[1:]), scope, i, path)}
    out: dict[str, str] = {}
    for w in words:
        key, sep, value = w.partition("=")
        if not sep:
            raise ImageBuildError(f"{path}:{i.line}: {w!r} is not KEY=VALUE")
        out[key] = _substitute(value, {**scope, **out}, i, path)
    return out


def _copy(context: Path, sources: Sequence[str], dest: str, rootfs: Path,
          patterns: Sequence[str]) -> None:
    """Docker's COPY: a folder's content goes into ``dest``; files go into ``dest/`` when it
    ends with "/" or several sources are given, else become ``dest``."""
    target = rootfs / dest.lstrip("/")
    into_dir = dest.endswith("/") or len(sources) > 1
    for src in sources:
        top = (context / src).resolve()
        for rel, p in _context_files(context, [src], patterns):
            if top.is_dir():
                out = target / Path(rel).relative_to(top.relative_to(context))
            else:
                out = target / p.name if into_dir else target
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.is_symlink() or out.exists():
                out.unlink()
            shutil.copy2(p, out, follow_symlinks=False)


def _archive_path(spec: ImageSpec, digest: str) -> Path:
    return cache_dir() / spec.name / f"{digest}.tar"


def _write_archive(out: Path, ref: str, layers: Sequence[tuple[Path, str]],
                   config: _Config) -> None:
    """A ``docker save`` archive: manifest.json, the config and one tar per layer."""
    image_config: dict[str, Any] = {
        "architecture": "amd64", "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: v for k, v in {
            "Env": [f"{k}={v}" for k, v in config.env.items()],
            "WorkingDir": config.workdir, "User": config.user,
            "Entrypoint": config.entrypoint, "Cmd": config.cmd,
            "ExposedPorts": {p: {} for p in config.ports} or None,
            "Labels": config.labels or None}.items() if v},
        "rootfs": {"type": "layers", "diff_ids": [d for _p, d in layers]},
        "history": [{"created_by": h} for h in config.history],
    }
    raw = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(raw).hexdigest() + ".json"
    layer_names = [f"{d.removeprefix('sha256:')}/layer.tar" for _p, d in layers]
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": layer_names}]
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        for name, data in (("manifest.json", json.dumps(manifest).encode()),
                           (config_name, raw)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for (layer, _d), name in zip(layers, layer_names, strict=True):
            tar.add(layer, arcname=name)
    tmp.replace(out)
    for old in sorted(out.parent.glob("*.tar"), key=lambda p: p.stat().st_mtime)[:-KEEP_ARCHIVES]:
        old.unlink()


def build_image(spec: ImageSpec, context: Path = REPO) -> Path:
    """The image's docker-archive, from the cache when its hash is there."""
    digest = source_hash(spec, context)
    out = _archive_path(spec, digest)
    if out.exists():
        _say(f"{spec.ref}: cached ({out})")
        return out
    dockerfile = parse_dockerfile(context / spec.dockerfile)
    base_name = dockerfile.base()
    recipe = BASES.get(base_name)
    if recipe is None:
        raise ImageBuildError(f"{spec.dockerfile}: FROM {base_name} has no Debian recipe in "
                              f"e2e/images/build.py BASES (known: {', '.join(BASES)})")
    _require_tools("unshare", "chroot")
    t0 = time.monotonic()
    base = _ensure_base(base_name, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=out.parent))
    try:
        rootfs = work / "rootfs"
        _say(f"{spec.ref}: building from {spec.dockerfile} (log {work / 'build.log'})")
        _run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(rootfs)], "copying the base")
        before = dict(_scan(rootfs))
        config = _Config(env=dict(recipe.env))
        log = work / "build.log"
        try:
            _apply(dockerfile, rootfs, config, context, log)
        except ImageBuildError:
            shutil.copy(log, out.parent / "last-failed-build.log") if log.exists() else None
            raise
        changed, whiteouts = _layer_diff(before, dict(_scan(rootfs)))
        top = _write_layer(work / "layer.tar", rootfs, changed, whiteouts)
        _write_archive(out, spec.ref, [(base.layer, base.diff_id), (work / "layer.tar", top)],
                       config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"{spec.ref}: built in {time.monotonic() - t0:.0f} s ({out.stat().st_size >> 20} MiB)")
    return out


def build_pause(k8s_module: Path) -> Path:
    """The sandbox image: Kubernetes' pause.c, static, as user 65535 (as upstream's)."""
    source = k8s_module / PAUSE_SOURCE
    if not source.exists():
        raise ImageBuildError(f"{source} is missing: run e2e/cluster/build.sh first (it "
                              "downloads the k8s.io/kubernetes module)")
    digest = hashlib.sha256(source.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:20]
    out = _archive_path(PAUSE, digest)
    if out.exists():
        return out
    _require_tools("gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        version = k8s_module.name.partition("@")[2]  # k8s.io/kubernetes@v1.35.4
        _run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={version}",
              "-o", str(rootfs / "pause"), str(source)], "gcc -static pause.c")
        _run(["strip", str(rootfs / "pause")], "strip pause")
        diff_id = _write_layer(Path(tmp) / "layer.tar", rootfs, list(_scan(rootfs)), [])
        config = _Config(env={"PATH": DEFAULT_PATH}, user="65535:65535", entrypoint=["/pause"],
                         history=[f"gcc -static {PAUSE_SOURCE} ({k8s_module.name})"])
        _write_archive(out, PAUSE.ref, [(Path(tmp) / "layer.tar", diff_id)], config)
    _say(f"{PAUSE.ref}: built from {source}")
    return out


def build_all(names: Sequence[str] = (), k8s_module: Path | None = None
              ) -> dict[str, Path]:
    """Every image in :data:`IMAGES` (or the named ones) plus the pause image when the
    Kubernetes module is given; name -> archive."""
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise ImageBuildError(f"unknown image(s) {', '.join(unknown)}; known: "
                              f"{', '.join(IMAGES)}")
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / "build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache (other checkouts)
        out = {n: build_image(IMAGES[n]) for n in (names or IMAGES)}
        if k8s_module is not None:
            out[PAUSE.name] = build_pause(k8s_module)
    return out


def import_archives(address: str, archives: Mapping[str, Path],
                    say: Callable[[str], None] = _say) -> None:
    """``ctr images import`` each archive into containerd's CRI namespace (unpacked for the
    default snapshotter, so the kubelet starts containers from it without a pull)."""
    for name, archive in archives.items():
        t0 = time.monotonic()
        _run(["ctr", "--address", address, "--namespace", CRI_NAMESPACE, "images", "import",
              str(archive)], f"ctr images import {archive}")
        say(f"imported {name} into containerd ({time.monotonic() - t0:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"images to build (default: all of "
                                                 f"{', '.join(IMAGES)})")
    parser.add_argument("--k8s-module", type=Path,
                        help="the k8s.io/kubernetes module folder: also build the pause image")
    parser.add_argument("--import-address", help="containerd socket to import them into")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print name, reference and cached archive (or 'not built')")
    args = parser.parse_args(argv)
    try:
        if args.print_only:
            for spec in IMAGES.values():
                path = _archive_path(spec, source_hash(spec))
                print(spec.name, spec.ref, path if path.exists() else "not built")
            return 0
        archives = build_all(args.names, args.k8s_module)
        if args.import_address:
            import_archives(args.import_address, archives)
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
