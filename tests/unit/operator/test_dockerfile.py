"""The operator image runs `kubeplex operator` and exposes the ports the settings default to."""

from __future__ import annotations

import re
from pathlib import Path

from kubeplex.operator._settings import Settings

DOCKERFILE = Path(__file__).resolve().parents[3] / "operator" / "Dockerfile"


def test_dockerfile_matches_the_cli_and_ports() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["kubeplex"]' in text and 'CMD ["operator"]' in text
    s = Settings()
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    assert exposed == {s.health_port, s.metrics_port, s.webhook_port}
    # every package folder the wheel maps is copied in
    for folder in ("kubeplex", "placement", "autoscaler", "operator", "runtime_image", "crds"):
        assert f"COPY {folder} ./{folder}" in text
    assert "'.[operator,runtime]'" in text


def test_readme_documents_every_setting() -> None:
    from kubeplex.operator._settings import ENV_DOCS

    readme = (DOCKERFILE.parent / "README.md").read_text()
    for var, (_field, default, _help) in ENV_DOCS.items():
        assert f"| `{var}` | `{default or '(empty)'}` |" in readme, var


def test_the_image_runs_the_gateway_too() -> None:
    """The chart's gateway Deployment runs this image with `kubeplex gateway`."""
    from kubeplex.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["gateway", "--port", "8080"])
    assert args.handler.__module__ == "kubeplex.cli._gateway"
    assert "runtime" in re.search(r"'\.\[(.+)\]'", DOCKERFILE.read_text()).group(1)
