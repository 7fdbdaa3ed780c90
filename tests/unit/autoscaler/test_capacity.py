"""Token-aware capacity alone: the prompt mix, per-prompt prefill, infeasible requests, decode
slots, the measured speed, and the queueing model over a mix."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from kubeplex.autoscaler.capacity import (
    MIN_MIX_REQUESTS,
    PromptMix,
    decode_step_line,
    measured_speed,
    prompt_mix,
    token_capacity,
)
from kubeplex.autoscaler.metrics import prompt_token_buckets
from kubeplex.autoscaler.queueing import (
    ReplicaCapacity,
    batch_wait,
    decode_batch,
    decode_replicas,
    erlang_c,
    miss_fraction,
    replicas_for_mix,
    replicas_for_slo,
    split_cv2,
)
from kubeplex.autoscaler.signals import Signals
from kubeplex.placement.llm import profile

H100 = profile("llama-3.1-8b", "H100-80GB")


def _histogram(prompts: list[int], max_len: int = 131072) -> tuple[tuple[float, float], ...]:
    bounds = (*prompt_token_buckets(max_len), math.inf)
    return tuple((b, float(sum(1 for p in prompts if p <= b))) for b in bounds)


def test_mix_keeps_the_exact_mean_and_the_shape_of_the_histogram() -> None:
    prompts = [500] * 80 + [30_000] * 20
    mean = sum(prompts) / len(prompts)
    mix = prompt_mix(_histogram(prompts), mean)
    assert mix.mean == pytest.approx(mean)
    assert math.fsum(w for _, w in mix.atoms) == pytest.approx(1.0)
    # a fifth of the weight sits in the 20k-50k bucket
    assert math.fsum(w for n, w in mix.atoms if n > 15_000) == pytest.approx(0.2, abs=0.01)


def test_too_few_prompts_or_no_histogram_give_one_atom_at_the_mean() -> None:
    few = _histogram([1000] * (MIN_MIX_REQUESTS - 1))
    assert prompt_mix(few, 1000.0) == PromptMix(((1000.0, 1.0),))
    assert prompt_mix((), 700.0) == PromptMix(((700.0, 1.0),))


def test_prefill_is_per_prompt_and_long_prompts_are_infeasible() -> None:
    mix = PromptMix(((1000.0, 0.9), (60_000.0, 0.1)))
    estimate = token_capacity(H100, mix, 300, slo_s=2.0, max_num_seqs=256)
    short, long = H100.prefill_seconds(1000), H100.prefill_seconds(60_000)
    assert long > 2.0 > short
    assert estimate.capacity.prefill_s == pytest.approx(0.9 * short + 0.1 * long)
    assert estimate.infeasible == pytest.approx(0.1)
    assert estimate.capacity.mix == ((pytest.approx(short), 0.9),)
    assert estimate.longest_feasible == 1000.0
    # the mean of the prefills, not the prefill of the mean prompt
    assert estimate.capacity.prefill_s > H100.prefill_seconds(round(mix.mean))
    assert estimate.capacity.prefill_cv2 > 1.0


def test_decode_slots_follow_the_kv_cache_and_speed_scales_every_time() -> None:
    mix = PromptMix(((12_000.0, 1.0),))
    estimate = token_capacity(H100, mix, 340, slo_s=2.0, max_num_seqs=256)
    slots = H100.kv_capacity_tokens() // (12_000 + 340)
    assert estimate.capacity.slots == slots < 256
    slower = token_capacity(H100, mix, 340, slo_s=2.0, max_num_seqs=256, speed=0.5)
    assert slower.capacity.work_s == pytest.approx(2 * estimate.capacity.work_s)
    assert slower.latency_s == pytest.approx(2 * estimate.latency_s)


def _signals(window: float, first_tokens: float, completion_rate: float) -> Signals:
    return Signals(time=window, window_s=window, instances=2, waiting=5, running=10,
                   kv_usage=0.5, arrival_rate=completion_rate, completion_rate=completion_rate,
                   prompt_token_rate=None, generation_token_rate=None, ttft_quantile=1.0,
                   ttft_count=first_tokens, arrival_cv2=1.0, saturated=True)


def test_measured_speed_is_model_work_done_per_second_per_replica() -> None:
    model = ReplicaCapacity(prefill_s=0.1, work_s=0.3, source="profile")
    # 2 replicas, 60 s: 600 first tokens (60 s of model prefill) and 5 req/s finished
    # (5 * 0.2 = 1 model-second of decode per second): the work of (1 + 1) / 2 replicas
    speed = measured_speed(_signals(60, 600, 5.0), 2, model)
    assert speed == pytest.approx((10 * 0.1 + 5.0 * 0.2) / 2)
    assert measured_speed(_signals(60, 0, 5.0), 2, model) is None
    assert measured_speed(_signals(60, 600, 5.0), 0, model) is None


def test_the_mix_rule_is_the_percentile_rule_for_one_atom() -> None:
    cap = ReplicaCapacity(prefill_s=0.05, work_s=0.1, source="hint")
    for rate in (5.0, 20.0, 80.0):
        assert replicas_for_mix(rate, cap, 1.0, 0.95, 0.85) == replicas_for_slo(
            rate, cap, 1.0, 0.95, 0.85)


def test_prompts_near_the_slo_need_idle_replicas_and_infeasible_ones_are_not_counted() -> None:
    short = ReplicaCapacity(0.2, 0.21, "profile", mix=((0.2, 1.0),))
    near = ReplicaCapacity(0.2, 0.21, "profile", prefill_cv2=2.0,
                           mix=((0.1, 0.9), (0.95, 0.1)))
    assert replicas_for_mix(20, near, 1.0, 0.99, 0.85) > replicas_for_mix(20, short, 1.0,
                                                                             0.99, 0.85)
    assert miss_fraction(10, 20, near, 1.0) > miss_fraction(10, 20, short, 1.0)
    # Nothing the SLO can count: the throughput bound, never a runaway search.
    none = ReplicaCapacity(3.0, 3.5, "profile", mix=())
    hopeless = ReplicaCapacity(3.0, 3.5, "profile", mix=((3.0, 1.0),))
    assert replicas_for_mix(2, hopeless, 1.0, 0.99, 0.85) == math.ceil(2 * 3.5 / 0.85)
    assert miss_fraction(4, 2, hopeless, 1.0) == 0.0
    assert replicas_for_mix(0, none, 1.0, 0.99, 0.85) == 0


def test_a_short_prompt_waits_behind_its_own_replicas_prefills_however_many_replicas() -> None:
    # Head-of-line blocking: at the same load per replica, once every replica is busy a short
    # prompt waits behind the prefill work of the one replica it joined, so the chance it
    # misses given that it waits does not shrink as replicas are added (in a pooled M/G/c
    # queue, served by the first of c replicas to free, its tail rate would grow c-fold).
    cap = ReplicaCapacity(0.3, 0.31, "profile", prefill_cv2=4.0, mix=((0.05, 1.0),))
    per_replica = 2.0  # req/s, 60% prefill utilization
    conditional = [miss_fraction(c, c * per_replica, cap, 1.0)
                   / erlang_c(c, c * per_replica * cap.prefill_s) for c in (2, 4, 8)]
    assert conditional == pytest.approx([conditional[0]] * 3)
    rho = per_replica * cap.prefill_s
    mean_wait = cap.prefill_s * (1 + cap.prefill_cv2) / 2 / (1 - rho)  # Pollaczek-Khinchine
    assert conditional[0] == pytest.approx(math.exp(-(1.0 - 0.05) / mean_wait))


def test_each_replica_queues_its_own_share_of_a_burst() -> None:
    # The whole stream's dispersion, split c ways at random, as one replica's share sees it:
    # counted on a bursty renewal stream (Gamma gaps, cv 3), over 8 s windows.
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.gamma(1 / 9, 9 / 30, 400_000))  # 30 req/s, cv^2 = 9
    edges = np.arange(0.0, arrivals[-1], 8.0)

    def dispersion(times: np.ndarray) -> float:
        counts = np.histogram(times, edges)[0]
        return float(counts.var() / counts.mean())

    whole = dispersion(arrivals)
    assert whole > 6
    for replicas in (2, 4, 8):
        share = dispersion(arrivals[rng.integers(0, replicas, arrivals.size) == 0])
        assert share == pytest.approx(split_cv2(whole, replicas), rel=0.08)
    assert split_cv2(9.0, 1) == 9.0 and split_cv2(1.0, 8) == 1.0
    # The queue of one replica then has the share's variability in its wait's tail.
    cap = ReplicaCapacity(0.05, 0.06, "profile", prefill_cv2=0.4, mix=((0.05, 1.0),))
    rate, replicas = 48.0, 4
    conditional = miss_fraction(replicas, rate, cap, 0.3, arrival_cv2=9.0) / erlang_c(
        replicas, rate * cap.prefill_s)
    theta = (1 / 0.05 - rate / replicas) / ((split_cv2(9.0, replicas) + 0.4) / 2)
    assert conditional == pytest.approx(math.exp(-theta * (0.3 - 0.05)))


def test_grouped_arrivals_wait_behind_their_batch_mates_even_at_light_load() -> None:
    # Requests arriving in groups (index of dispersion I = E[X^2] / E[X] = 9: a request's
    # group holds 9 on average, 4 of them ahead of it) at 5% load on one replica: the queue
    # is almost always empty, yet a request waits behind the prefills of its batch-mates.
    # Geometric batches (P(ahead >= n) = q^n, mean q / (1 - q) = 4) and exponential prefills
    # of 0.5 s make that wait exactly q * Exp(rate (1 - q) / 0.5 s).
    cap = ReplicaCapacity(0.5, 0.5, "profile", mix=((0.0, 1.0),))
    dispersion, rate, slo = 9.0, 0.1, 2.0
    q = 4 / 5
    behind_batch = q * math.exp(-(1 - q) / 0.5 * slo)
    assert batch_wait(1, dispersion, 0.5) == pytest.approx((q, (1 - q) / 0.5))
    # The same dispersion from a rate varying over seconds (no batch-mates) waits only when
    # the queue is busy, 5% of the time: the grouped requests miss over 10x as often.
    grouped = miss_fraction(1, rate, cap, slo, dispersion, dispersion)
    assert grouped == pytest.approx(behind_batch, rel=0.1)
    assert grouped > 10 * miss_fraction(1, rate, cap, slo, dispersion)


def test_a_batch_spreads_over_the_replicas_and_poisson_arrivals_have_no_batch_mates() -> None:
    # The gateway spreads a group over the replicas: with c replicas a request has a batch-mate
    # ahead on its own replica only when c or more are ahead of it in the group (q^c).
    assert batch_wait(7, 1.0, 0.6) == (0.0, math.inf)
    assert batch_wait(7, 0.5, 0.6) == (0.0, math.inf)  # under-dispersed reads as Poisson
    chance, _ = batch_wait(4, 11.0, 0.6)
    assert chance == pytest.approx((5 / 6) ** 4)
    cap = ReplicaCapacity(0.6, 0.62, "profile", prefill_cv2=4.0, mix=((0.3, 1.0),))
    misses = [miss_fraction(c, 3.4, cap, 2.0, 11.0, 11.0) for c in (7, 9, 12, 16)]
    assert misses == sorted(misses, reverse=True)
    assert misses[0] > 5 * miss_fraction(7, 3.4, cap, 2.0, 11.0)  # the rate-varying reading
    assert (replicas_for_mix(3.4, cap, 2.0, 0.99, 0.85, 11.0, 11.0)
            > replicas_for_mix(3.4, cap, 2.0, 0.99, 0.85, 11.0))


def test_a_heavy_tailed_prompt_mix_needs_more_replicas_than_a_uniform_one_of_its_mean() -> None:
    # The same mean prefill (~0.58 s), one SLO and percentile: 94% short prompts (0.07 s) and
    # 6% whose prefill takes 8.6 s (the SLO cannot count them, but they occupy a replica)
    # against every prompt alike. Short prompts stuck behind the long prefills need replicas
    # the mean alone does not show.
    heavy = token_capacity(H100, PromptMix(((2_000.0, 0.94), (100_000.0, 0.06))), 200,
                           slo_s=2.0, max_num_seqs=256).capacity
    uniform = replace(heavy, prefill_cv2=0.0, mix=((heavy.prefill_s, 1.0),))
    assert heavy.prefill_cv2 > 5
    for rate in (2.0, 3.4, 6.0):
        assert (replicas_for_mix(rate, heavy, 2.0, 0.99, 0.85)
                >= replicas_for_mix(rate, uniform, 2.0, 0.99, 0.85) + 2)


def test_the_decode_step_line_passes_through_the_model_at_one_and_at_the_slots() -> None:
    base, per_seq = decode_step_line(H100, 256, 600, speed=1.0)
    assert base + per_seq == pytest.approx(H100.decode_step_seconds(1, 600))
    assert base + 256 * per_seq == pytest.approx(H100.decode_step_seconds(256, 600))
    slow_base, slow_per_seq = decode_step_line(H100, 256, 600, speed=0.5)
    assert (slow_base, slow_per_seq) == (pytest.approx(2 * base), pytest.approx(2 * per_seq))


def test_the_steady_decode_batch_produces_the_decode_tokens_in_the_time_prefills_leave() -> None:
    cap = ReplicaCapacity(prefill_s=0.02, work_s=0.03, source="profile", slots=256.0,
                          decode_tokens=127.0, step_base_s=0.009, step_per_seq_s=3e-5)
    rate = 20.0
    batch = decode_batch(rate, cap)
    free = 1 - rate * cap.prefill_s  # the share of time decode steps get
    produced = free * batch / (cap.step_base_s + cap.step_per_seq_s * batch)
    assert produced == pytest.approx(rate * 127.0)
    # more arrivals than prefills and decode steps can serve together: no steady batch
    assert decode_batch(45.0, cap) == math.inf
    assert decode_batch(rate, replace(cap, decode_tokens=None)) == 0.0


def test_replicas_are_the_larger_of_the_ttft_and_decode_bounds_not_their_sum() -> None:
    # 510-token prompts, 129-token answers on an H100 at a 0.5 s SLO (the on-off trace): the
    # prefills use 64% of one replica at 34 req/s and decoding the rest fits in its slots, so
    # one replica holds the SLO; a bound on prefill + decode work at 85% asked for two.
    estimate = token_capacity(H100, PromptMix(((510.0, 1.0),)), 129, slo_s=0.5,
                              max_num_seqs=256)
    cap = estimate.capacity
    assert math.ceil(34 * cap.work_s / 0.85) == 2
    assert decode_replicas(34, cap, 0.85) == 1
    assert replicas_for_mix(34, cap, 0.5, 0.99, 0.85, arrival_cv2=2.25) == 1
    # long answers: decoding binds, and the answer is its bound, above the TTFT one
    chatty = token_capacity(H100, PromptMix(((510.0, 1.0),)), 2000, slo_s=0.5,
                            max_num_seqs=256).capacity
    ttft_only = replicas_for_mix(34, replace(chatty, decode_tokens=None, work_s=1e-9), 0.5,
                                 0.99, 0.85, arrival_cv2=2.25)
    assert replicas_for_mix(34, chatty, 0.5, 0.99, 0.85, arrival_cv2=2.25) == decode_replicas(
        34, chatty, 0.85) > ttft_only
