"""Calibrated profiles: the fits recover known coefficients, the file format round-trips and
refuses bad files by field, and the latency model uses a calibration where it applies."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from kubeplex.placement.calibration import (
    CalibrationError,
    DecodePoint,
    PrefillFit,
    PrefillPoint,
    calibration_from_dict,
    calibration_to_dict,
    fit_calibration,
    fit_decode,
    fit_prefill,
    points_from_dict,
)
from kubeplex.placement.errors import UnknownProfileError
from kubeplex.placement.llm import calibrated, model, profile


def _prefill_points(noise: float = 0.0, seed: int = 1) -> list[PrefillPoint]:
    rng = np.random.default_rng(seed)
    points = []
    for n in (128, 512, 2048, 8192):
        for k in (1, 4, 16):
            exact = 0.004 + 2e-5 * k * n + 3e-10 * k * n * n
            points.append(PrefillPoint(n, k, exact * (1 + noise * rng.standard_normal())))
    return points


def _decode_points() -> list[DecodePoint]:
    return [DecodePoint(b, c, 0.007 + 1e-5 * b + 2e-8 * b * c)
            for b in (1, 8, 64, 256) for c in (256, 4096)]


def test_exact_points_give_the_coefficients_back() -> None:
    fit, error = fit_prefill(_prefill_points())
    assert fit.fixed_s == pytest.approx(0.004, rel=1e-6)
    assert fit.per_token_s == pytest.approx(2e-5, rel=1e-6)
    assert fit.per_token2_s == pytest.approx(3e-10, rel=1e-5)
    assert error.max < 1e-6 and error.points == 12
    decode, derror = fit_decode(_decode_points())
    assert (decode.fixed_s, decode.per_seq_s) == (pytest.approx(0.007), pytest.approx(1e-5))
    assert decode.per_context_s == pytest.approx(2e-8)
    assert derror.median < 1e-6


def test_noise_shows_in_the_fit_error_and_coefficients_stay_non_negative() -> None:
    fit, error = fit_prefill(_prefill_points(noise=0.05))
    assert 0.005 < error.median < 0.1
    assert min(fit.fixed_s, fit.per_token_s, fit.per_token2_s) >= 0
    # Times that shrink with the batch would need a negative slope: clamped to zero.
    falling = [PrefillPoint(100, k, 1.0 / k) for k in (1, 2, 4, 8)]
    clamped, _ = fit_prefill(falling)
    assert clamped.per_token_s == 0 and clamped.per_token2_s == 0 and clamped.fixed_s > 0


def test_batched_prefill_is_quadratic_per_prompt() -> None:
    fit, _ = fit_prefill(_prefill_points())
    assert fit.seconds([(512, 0)] * 4) < fit.seconds([(2048, 0)])
    assert fit.seconds([(512, 0)] * 4) == pytest.approx(0.004 + 2e-5 * 2048 + 3e-10 * 4 * 512**2)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([PrefillPoint(10, 1, 0.1)] * 3, "at least 4 points"),
        ([PrefillPoint(10, 1, 0.1)] * 3 + [PrefillPoint(10, 1, -1.0)], "positive"),
        ([PrefillPoint(0, 1, 0.1)] * 4, "must be >= 1"),
    ],
)
def test_bad_points_are_refused(points: list[PrefillPoint], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        fit_prefill(points)


def _calibration(gpu: str = "H100-80GB"):  # type: ignore[no-untyped-def]
    return fit_calibration("llama-test", "llama-3.1-8b", gpu, "test-engine",
                           _prefill_points(), _decode_points(), kv_capacity_tokens=300_000,
                           memory_fraction=0.9, source="unit test")


def test_profile_file_round_trips_with_its_points() -> None:
    cal = _calibration()
    data = json.loads(json.dumps(calibration_to_dict(cal, _prefill_points(), _decode_points())))
    again = calibration_from_dict(data)
    assert again.prefill.per_token_s == pytest.approx(cal.prefill.per_token_s)
    assert again.decode.per_context_s == pytest.approx(cal.decode.per_context_s)
    assert (again.name, again.model, again.gpu, again.kv_capacity_tokens) == (
        "llama-test", "llama-3.1-8b", "H100-80GB", 300_000)
    assert again.prefill_error.points == 12
    prefill, decode = points_from_dict(data)
    assert prefill == _prefill_points() and len(decode) == 8


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(kind="other"), "not a kubeplex latency profile"),
        (lambda d: d.pop("gpu"), "missing field 'gpu'"),
        (lambda d: d["prefill"].update(perTokenSeconds="fast"), "'perTokenSeconds' has the wrong"),
        (lambda d: d["decode"].update(fixedSeconds=-1), "fixedSeconds' must be >= 0"),
        (lambda d: d.update(kvCapacityTokens=0), "kvCapacityTokens' must be >= 1"),
        (lambda d: d.update(memoryFraction=1.5), r"memory_fraction must be in \(0, 1\]"),
        (lambda d: d["points"].update(decode=[[1, 2]]), r"points.decode\[0\]: expected three"),
    ],
)
def test_bad_profile_files_name_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(calibration_to_dict(_calibration(), _prefill_points(),
                                                     _decode_points())))
    mutate(data)

    def load() -> None:
        calibration_from_dict(data)
        points_from_dict(data)

    with pytest.raises(CalibrationError, match=message):
        load()


def test_a_calibrated_shape_uses_its_measurements_on_its_own_shape() -> None:
    cal = _calibration()
    prof = profile("llama-3.1-8b", "H100-80GB")
    measured = replace(prof, model=calibrated(cal))
    assert measured.prefill_seconds(2048) == pytest.approx(cal.prefill.seconds([(2048, 0)]))
    assert measured.batch_prefill_seconds([(512, 0)] * 4) == pytest.approx(
        cal.prefill.seconds([(512, 0)] * 4))
    assert measured.decode_step_seconds(64, 4096) == pytest.approx(cal.decode.seconds(64, 4096))
    assert measured.kv_capacity_tokens(0.9) == pytest.approx(300_000, rel=1e-5)
    # Less memory: the measured capacity scaled by the analytic model's ratio.
    assert measured.kv_capacity_tokens(0.5) < 300_000


def test_elsewhere_a_calibration_scales_by_the_analytic_ratio() -> None:
    cal = _calibration("H100-80GB")
    on_a100 = profile("llama-3.1-8b", "A100-80GB")
    measured = replace(on_a100, model=calibrated(cal))
    h100 = profile("llama-3.1-8b", "H100-80GB")
    ratio = on_a100.prefill_seconds(4096) / h100.prefill_seconds(4096)
    assert measured.prefill_seconds(4096) == pytest.approx(cal.prefill.seconds([(4096, 0)]) * ratio)
    tp2 = replace(profile("llama-3.1-8b", "H100-80GB", tp=2), model=calibrated(cal))
    assert tp2.decode_step_seconds(8, 1024) < cal.decode.seconds(8, 1024)


def test_calibrations_must_name_catalogued_shapes() -> None:
    with pytest.raises(UnknownProfileError, match="not in the catalogue"):
        calibrated(replace(_calibration(), model="gpt-9"))
    with pytest.raises(UnknownProfileError, match="unknown GPU"):
        calibrated(replace(_calibration(), gpu="TPU-v9"))
    with pytest.raises(UnknownProfileError, match="calibrated:"):
        model("no-such-model")


def test_batched_analytic_prefill_charges_attention_per_prompt() -> None:
    """Issue 14: 256 prompts of 512 tokens cost 13.4 s as one sequence, ~4.3 s per prompt."""
    prof = profile("llama-3.1-8b", "A100-80GB")
    batched = prof.batch_prefill_seconds([(512, 0)] * 256)
    assert batched < 0.4 * prof.prefill_seconds(256 * 512)
    assert batched == pytest.approx(256 * (prof.prefill_seconds(512) - 0.002), rel=0.05)
    assert prof.batch_prefill_seconds([(700, 0)]) == prof.prefill_seconds(700)


def test_a_cached_prefix_costs_attention_only_in_the_fit_and_the_model() -> None:
    """New tokens attend to a cached prefix (2 n c pairs) but recompute none of it."""
    fit = PrefillFit(0.004, 2e-5, 3e-10)
    assert fit.seconds([(512, 4096)]) == pytest.approx(
        0.004 + 2e-5 * 512 + 3e-10 * 512 * (512 + 2 * 4096))
    measured = replace(profile("llama-3.1-8b", "H100-80GB"), model=calibrated(_calibration()))
    for prof in (measured, profile("llama-3.1-8b", "H100-80GB")):
        hit = prof.prefill_seconds(512, cached_tokens=4096)
        assert prof.prefill_seconds(512) < hit < prof.prefill_seconds(4608)
