"""Local-mode settings and preparation (no process starts here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeplex.operator.local import LocalMode, LocalSettings, SettingsError, load_settings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SETTINGS = "apiVersion: local.kubeplex.io/v1alpha1\nkind: LocalSettings\nspec: {spec}\n"


def test_defaults_without_a_settings_document():
    assert load_settings([EXAMPLES / "sim-h100.yaml"]) == LocalSettings()


def test_settings_document_is_read_and_overridden(tmp_path):
    (tmp_path / "s.yaml").write_text(SETTINGS.format(spec="{tickSeconds: 2, engine: sim}"))
    settings = load_settings([tmp_path]).with_overrides(tick_seconds=None, engine="vllm")
    assert (settings.tick_seconds, settings.engine) == (2, "vllm")
    assert settings.resume_plain_requests  # the default
    (tmp_path / "s.yaml").write_text(SETTINGS.format(spec="{resumePlainRequests: false}"))
    assert not load_settings([tmp_path]).resume_plain_requests


@pytest.mark.parametrize(("spec", "message"), [
    ("{tickSecond: 1}", "spec.tickSecond is not a setting"),
    ("{tickSeconds: 0}", "spec.tickSeconds: must be"),
    ("{holdQueueLimit: -1}", "spec.holdQueueLimit: must be"),
    ("{engine: tpu}", "spec.engine: must be one of auto, sim, vllm"),
    ("{resumePlainRequests: 1}", "spec.resumePlainRequests: must be true or false"),
    ("{migrateAfterSeconds: true}", "spec.migrateAfterSeconds: must be"),
    ("[1, 2]", "spec must be a mapping"),
])
def test_bad_settings_name_the_key(tmp_path, spec, message):
    (tmp_path / "s.yaml").write_text(SETTINGS.format(spec=spec))
    with pytest.raises(SettingsError, match=message):
        load_settings([tmp_path / "s.yaml"])


def test_two_settings_documents_are_refused(tmp_path):
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(SETTINGS.format(spec="{}"))
    with pytest.raises(SettingsError, match="two LocalSettings documents"):
        load_settings([tmp_path])


def test_prepare_falls_back_to_sim_and_says_why(tmp_path):
    mode = LocalMode.prepare([EXAMPLES / "local-cpu.yaml"], workdir=tmp_path / "w")
    run = next(iter(mode.runs.values()))
    assert run.engine == "sim" and "not a local path that exists" in run.engine_reason
    assert run.entry["model"] == "tiny-llama" and run.gpu == "cpu"
    assert not (tmp_path / "w").exists()  # preparing starts and writes nothing
    with pytest.raises(SettingsError, match="LocalSettings engine vllm, but"):
        LocalMode.prepare([EXAMPLES / "local-cpu.yaml"], engine="vllm")


