"""The image builder (e2e/images/build.py) without root: it reads every Dockerfile of the
repository, copies and ignores files as Docker does, writes layers with whiteouts and a
``docker save`` archive, and the chart's real-node values name exactly the images it builds
(the real-pod tier, tests/realpods, runs them)."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
import yaml
from clusterkit import REPO, cluster_lib

images = cluster_lib.load_module(REPO / "e2e" / "images" / "build.py", "kubeplex_e2e_images")
DOCKERFILES = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("*/Dockerfile*")
                     if not p.name.endswith(".dockerignore"))


@pytest.mark.parametrize("path", DOCKERFILES)
def test_every_dockerfile_uses_only_what_the_builder_runs(path: str) -> None:
    dockerfile = images.parse_dockerfile(REPO / path)
    assert dockerfile.instructions[0].keyword in ("FROM", "ARG")
    assert dockerfile.ignore, f"{path}: add {path}.dockerignore (caches, .venv stay out)"
    for src in dockerfile.copy_sources():
        assert (REPO / src).exists(), f"{path}: COPY {src}: no such file"


@pytest.mark.parametrize("name", sorted(images.IMAGES))
def test_built_images_have_a_debian_recipe_for_their_base(name: str) -> None:
    spec = images.IMAGES[name]
    assert images.parse_dockerfile(REPO / spec.dockerfile).base() in images.BASES


def test_the_chart_values_for_the_real_node_name_the_built_images() -> None:
    values = yaml.safe_load((REPO / "helm/kubeplex/ci/real-node-values.yaml").read_text())
    operator = f"{values['image']['repository']}:{values['image']['tag']}"
    runtime = f"{values['runtime']['image']['repository']}:{values['runtime']['image']['tag']}"
    assert operator == images.IMAGES["kubeplex"].ref
    assert runtime == images.IMAGES["kubeplex-runtime-sim"].ref
    assert values["image"]["pullPolicy"] == "Never"  # nothing to pull them from


def test_the_chart_runs_the_operator_image_as_its_own_user() -> None:
    """A uid the image lacks stops kopf at start (getpass.getuser())."""
    text = (REPO / "operator/Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", text, re.M)
    assert user is not None
    assert f"--uid {user.group(1)} " in text
    values = yaml.safe_load((REPO / "helm/kubeplex/values.yaml").read_text())
    for component in ("operator", "gateway"):
        assert values[component]["podSecurityContext"]["runAsUser"] == int(user.group(1))


@pytest.mark.parametrize(("path", "ignored"), [
    ("operator/__pycache__/x.pyc", True), ("kubeplex/api/__pycache__", True),
    ("build/lib/x.py", True), ("operator/build.py", False), ("tests/x.py", True),
    ("operator/tests/x.py", False), ("kubeplex/x.py", False),
])
def test_dockerignore_patterns_match_as_docker_does(path: str, ignored: bool) -> None:
    patterns = images.parse_dockerfile(REPO / "operator/Dockerfile").ignore
    assert images._ignored(path, patterns) is ignored


def test_an_exception_pattern_brings_a_file_back() -> None:
    assert images._ignored("docs/a.md", ["docs"])
    assert not images._ignored("docs/keep.md", ["docs", "!docs/keep.md"])


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "pkg" / "__pycache__").mkdir(parents=True)
    (ctx / "pkg" / "a.py").write_text("A = 1\n")
    (ctx / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"junk")
    (ctx / "top.txt").write_text("top\n")
    (ctx / "Dockerfile").write_text(
        "FROM python:3.11-slim-bookworm\n"
        "# a comment\n"
        "ARG FLAVOUR=sim\n"
        "WORKDIR /opt/app\n"
        "COPY top.txt ./\n"
        "COPY pkg ./pkg\n"
        "ENV A=1 \\\n    B=${FLAVOUR}\n"
        "USER 10001\n"
        "EXPOSE 8000 8001/udp\n"
        'ENTRYPOINT ["app"]\n'
        'CMD ["--port", "8000"]\n')
    (ctx / "Dockerfile.dockerignore").write_text("**/__pycache__\n")
    return ctx


def test_source_hash_follows_copied_files_and_not_ignored_ones(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    spec = images.ImageSpec("t", "Dockerfile", "kubeplex.local/t:dev")
    first = images.source_hash(spec, ctx)
    (ctx / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"other junk")
    assert images.source_hash(spec, ctx) == first
    (ctx / "pkg" / "a.py").write_text("A = 2\n")
    assert images.source_hash(spec, ctx) != first


def test_instructions_build_the_rootfs_and_the_config(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    config = images._Config(env={"PATH": images.DEFAULT_PATH})
    images._apply(images.parse_dockerfile(ctx / "Dockerfile"), rootfs, config, ctx,
                  tmp_path / "log")
    assert (rootfs / "opt/app/top.txt").read_text() == "top\n"
    assert (rootfs / "opt/app/pkg/a.py").exists()
    assert not (rootfs / "opt/app/pkg/__pycache__").exists()
    assert config.workdir == "/opt/app"
    assert config.env == {"PATH": images.DEFAULT_PATH, "A": "1", "B": "sim"}
    assert config.user == "10001"
    assert config.ports == ["8000/tcp", "8001/udp"]
    assert (config.entrypoint, config.cmd) == (["app"], ["--port", "8000"])


def test_layer_diff_carries_changes_and_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "keep").mkdir(parents=True)
    (root / "gone" / "deep").mkdir(parents=True)
    (root / "keep" / "same").write_text("same")
    (root / "keep" / "edit").write_text("v1")
    (root / "gone" / "deep" / "f").write_text("x")
    before = dict(images._scan(root))
    (root / "keep" / "edit").write_text("version 2")
    (root / "keep" / "new").write_text("new")
    for p in (root / "gone" / "deep" / "f", root / "gone" / "deep", root / "gone"):
        p.unlink() if p.is_file() else p.rmdir()
    changed, whiteouts = images._layer_diff(before, dict(images._scan(root)))
    assert {p for p, _m in changed} == {"keep", "keep/edit", "keep/new"}
    assert whiteouts == ["gone"]  # one whiteout for the folder, none for what was in it
    layer = tmp_path / "layer.tar"
    images._write_layer(layer, root, changed, whiteouts)
    with tarfile.open(layer) as tar:
        assert set(tar.getnames()) == {"keep", "keep/edit", "keep/new", ".wh.gone"}
        assert tar.getmember("keep/new").uname == ""  # numeric owners only


def test_archive_is_docker_save_format(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "pause").write_text("binary")
    diff_id = images._write_layer(tmp_path / "l.tar", root, list(images._scan(root)), [])
    out = tmp_path / "image.tar"
    config = images._Config(env={"PATH": images.DEFAULT_PATH}, entrypoint=["/pause"],
                            user="65535:65535")
    images._write_archive(out, "kubeplex.local/pause:dev", [(tmp_path / "l.tar", diff_id)],
                          config)
    with tarfile.open(out) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest["RepoTags"] == ["kubeplex.local/pause:dev"]
        image_config = json.load(tar.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        assert image_config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
        assert image_config["config"]["Entrypoint"] == ["/pause"]
        assert manifest["Layers"][0] in tar.getnames()


@pytest.mark.parametrize(("text", "error"), [
    ("FROM a\nFROM b\n", "single-stage"),
    ("FROM python:3.11-slim-bookworm\nHEALTHCHECK CMD true\n", "HEALTHCHECK is not handled"),
    ("FROM python:3.11-slim-bookworm\nCOPY --chown=1:1 a b\n", "COPY flags"),
    ("FROM python:3.11-slim-bookworm\nRUN true \\\n", "line continuation"),
    ("FROM ${NOPE}\n", "$NOPE is not set"),
])
def test_what_it_cannot_build_is_named(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    with pytest.raises(images.ImageBuildError, match=re.escape(error)):
        _read_everything(path)


def _read_everything(path: Path) -> None:
    dockerfile = images.parse_dockerfile(path)
    dockerfile.base()
    dockerfile.copy_sources()
