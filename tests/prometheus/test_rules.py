"""The shipped alert rules: generated file up to date, promtool checks and unit tests on the
rules as the chart renders them, amtool on the example Alertmanager configuration."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helmtool import CHART, helm_binary, helm_missing_reason, template

from kubeplex.cli import main
from kubeplex.cli._alerts import render_rules

RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
RULES_TEST = Path(__file__).resolve().parent / "rules_test.yaml"
AM_EXAMPLE = CHART / "files" / "alertmanager-example.yaml"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not on PATH; `make setup` installs it "
                    "(scripts/ensure-prometheus.sh)")
    return path


def test_committed_rules_are_generated() -> None:
    assert RULES_FILE.read_text() == render_rules(), (
        "helm/kubeplex/files/prometheus-rules.yaml is stale; regenerate it with "
        "`kubeplex alerts rules > helm/kubeplex/files/prometheus-rules.yaml`")


def test_cli_prints_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "rules"]) == 0
    assert capsys.readouterr().out == RULES_FILE.read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--percentiles", "95,x"], "--percentiles '95,x'"),
    (["--percentiles", "100"], "percentile 100.0 must be between 0 and 100"),
    (["--percentiles", "95,95.0"], "repeat"),
    (["--ttft-window", "5 minutes"], "ttft_window='5 minutes' is not a Prometheus duration"),
    (["--for", "soon"], "is not a Prometheus duration"),
])
def test_cli_refuses_bad_settings(capsys: pytest.CaptureFixture[str], args: list[str],
                                  message: str) -> None:
    assert main(["alerts", "rules", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err


@pytest.fixture
def rendered_rules(tmp_path: Path) -> Path:
    """The PrometheusRule spec exactly as the chart renders it, as a rule file."""
    if helm_binary() is None:
        pytest.skip(helm_missing_reason())
    docs = template("--set", "monitoring.prometheusRule.enabled=true",
                    "--show-only", "templates/monitoring.yaml")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    path = tmp_path / "prometheus-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


@pytest.mark.prometheus
@pytest.mark.helm
def test_promtool_checks_rendered_rules(rendered_rules: Path) -> None:
    promtool = need("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(rendered_rules)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout


@pytest.mark.prometheus
@pytest.mark.helm
def test_promtool_unit_tests_of_each_alert(rendered_rules: Path) -> None:
    promtool = need("promtool")
    shutil.copy(RULES_TEST, rendered_rules.parent / RULES_TEST.name)
    tested = {t["alertname"] for group in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in group["alert_rule_test"]}
    shipped = {r["alert"] for g in yaml.safe_load(rendered_rules.read_text())["groups"]
               for r in g["rules"]}
    assert tested == shipped, f"alerts without promtool tests: {shipped - tested}"
    proc = subprocess.run([promtool, "test", "rules", RULES_TEST.name],
                          cwd=rendered_rules.parent, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.prometheus
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests fail when a rule loses its routing label (they are not vacuous)."""
    promtool = need("promtool")
    broken = RULES_FILE.read_text().replace("kubeplex_receiver: operator", "team: x")
    (tmp_path / "prometheus-rules.yaml").write_text(broken)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    proc = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


@pytest.mark.prometheus
def test_amtool_checks_the_example_receiver() -> None:
    amtool = need("amtool")
    proc = subprocess.run([amtool, "check-config", str(AM_EXAMPLE)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.prometheus
def test_example_routes_operator_alerts_to_the_webhook() -> None:
    amtool = need("amtool")
    for labels, receiver in [
        (["alertname=KubeplexQueueBacklog", "kubeplex_receiver=operator",
          "namespace=a", "modelservice=b"], "kubeplex-operator"),
        (["alertname=KubeplexOperatorDown", "kubeplex_receiver=oncall"], "oncall"),
        (["alertname=Other"], "default"),
    ]:
        proc = subprocess.run([amtool, "config", "routes", "test",
                               f"--config.file={AM_EXAMPLE}", *labels],
                              capture_output=True, text=True, check=False)
        assert proc.stdout.strip() == receiver, (labels, proc.stdout, proc.stderr)
