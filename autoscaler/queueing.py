"""The queueing model: how many replicas meet a TTFT percentile SLO at an arrival rate.

Model (and its assumptions)
---------------------------
vLLM schedules prefills ahead of decode steps, so a new request waits only for the prefills
ahead of it (and for a free slot when the engine is full). kubeplex therefore models the fleet
as two constraints, both per replica with the gateway spreading load evenly:

1. **TTFT**: the prefills form an M/G/c queue (``c`` = replicas, Poisson-like arrivals at rate
   ``lambda``, service time = the prefill time of a mean prompt). Its waiting time uses the
   Allen-Cunneen approximation: the M/M/c probability of waiting (Erlang C, ``P_W``) and an
   exponential tail whose rate ``(c*mu - lambda)`` is divided by ``(ca2 + cs2) / 2``, the
   arrival and service squared coefficients of variation (1 and 1 for M/M/c; bursty traffic
   has ca2 well above 1). The p-th percentile of the wait is 0 when ``P_W <= 1 - p``, else
   ``ln(P_W / (1 - p)) * (ca2 + cs2) / 2 / (c*mu - lambda)``; TTFT = that wait + the prefill.
2. **Decode** (:func:`decode_batch`, :func:`decode_replicas`): prefills run ahead of decoding,
   so decoding gets the time the prefills leave, ``1 - lambda * prefill``, and a step with
   ``b`` sequences (``step_base_s + step_per_seq_s * b``) yields ``b`` tokens. The batch
   grows until that covers the output tokens (Little's law on the decode phase):
   ``b = lambda * n * base / (1 - lambda * prefill - lambda * n * per_seq)`` for ``n`` tokens
   after the first; it must stay within ``max_utilization`` of the ``slots`` (``max_num_seqs``
   or what the KV cache holds at the mean context), or requests queue for admission and their
   TTFT grows. The replica count is the **larger** of this bound and the TTFT one, not one
   bound on the sum of prefill and decode work: the prefill queue sees only prefills. (The
   simulated fleet preempts decoding for a prefill; vLLM V1 runs one decode step with each
   prefill step, and its prefill phase, ``vllm:request_prefill_time_seconds``, then includes
   it: the measured speed correction scales the TTFT service time by what the engine really
   does.) A capacity without a decode model (``decode_tokens`` None, e.g. from hints) keeps
   the throughput bound: ``lambda * work_s / c <= max_utilization``.

**Prompt mixes** (:func:`replicas_for_mix`): prompts differ in length and a request's TTFT is
the wait plus *its own* prefill, so a long prompt has less slack under the SLO. With the
prefill times of the requests the SLO counts given as weighted atoms ``(p_i, w_i)``, the
predicted fraction that misses is ``sum_i w_i * min(1, P_W * exp(-theta * (SLO - p_i)))``,
which must stay within ``1 - quantile``; the queue's service time is the mean prefill of *all*
requests (the infeasible long ones included: they occupy a replica) and its squared CV comes
from the mix. **Head-of-line blocking**: the gateway sends a request to a replica, and each
engine serves its own prefills first come, first served, so once every replica is busy
(``P_W``) the request waits behind the prefill work of *its* replica (the residual of a long
prefill in progress and the queue behind it), not for the first of ``c`` to free. The wait
given that it waits is therefore one replica's M/G/1 wait at load ``rho = lambda * prefill /
c``, whose conditional mean is ``prefill * (ca2 + cs2) / 2 / (1 - rho)`` (Pollaczek-Khinchine
with Kingman's arrival term): ``theta = (mu - lambda / c) / ((ca2 + cs2) / 2)``, ``c`` times
slower than the pooled queue's of point 1, and slowest where prompt lengths are heavy-tailed
(``cs2`` large). Its ``ca2`` is that of the replica's own share of the arrivals
(:func:`split_cv2`): the gateway spreads a burst over the ``c`` replicas, so each queue sees
it ``1 / c`` as deep, ``ca2 / c + 1 - 1 / c`` (a random split; sending each request to the
least busy replica is more even still). Against the simulated fleet at steady load
(``benchmarks/autoscaler/queueing_vs_fleet.py``; light-tailed prompts, arrival cv 1-4, 1-6
replicas) this picks the fewest replicas that meet the SLO in 28 of 29 cases (one short at
cv 4), where the whole stream's ``ca2`` asked 1-2 more in 7. With heavy-tailed prompts *and*
bursty arrivals both readings are optimistic: a request sent behind a long prefill waits
longer than the exponential tail says. With one atom at the mean and one replica this is exactly
the percentile rule of point 1, which stays the pooled M/G/c rule (:func:`replicas_for_slo`,
the baselines' tuning).

**Grouped arrivals** (:func:`batch_wait`): clients that send several requests at once (a
production conversation trace holds 12,031 requests at 1,180 instants) make a request wait
behind the batch-mates sent with it even when the queue is otherwise empty, which the M/G/1
tail, scaled by the probability that every replica is busy, cannot show. With batches at
Poisson times (M^X/G/1 per replica), a request's wait is the wait of its batch (the M/G/1
wait above with ``ca2`` the index of dispersion ``I``) plus the prefills of the batch-mates
ahead of it on its own replica; :func:`miss_fraction` adds the two as independent
zero-or-exponential parts. ``I`` of simultaneous arrivals comes from the metrics
(``Signals.arrival_batch``); at ``I = 1`` the rule is the one above.

Assumptions: arrivals independent of the state (no client back-off), one FIFO class per
replica, routing that keeps replicas evenly loaded but cannot see how long a prefill in
progress has left, prefill preempting decode (vLLM's default ordering), the
decode batch large enough that its per-request share is well estimated by the latency model.
The model is a steady-state one; bursts are the panic window's and the queue rule's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ReplicaCapacity",
    "batch_wait",
    "decode_batch",
    "decode_replicas",
    "erlang_c",
    "miss_fraction",
    "replicas_for_mix",
    "replicas_for_slo",
    "split_cv2",
    "ttft_percentile",
]

#: Hard stop of the replica search (no ModelService needs more; avoids an endless loop).
MAX_SEARCH_REPLICAS = 10_000


@dataclass(frozen=True)
class ReplicaCapacity:
    """What one replica can do, from measurements or the latency model.

    ``prefill_s``: prefill time of a mean prompt; ``work_s``: GPU seconds one mean request
    costs in all (prefill + its share of decode steps at the operating batch), so
    ``1 / work_s`` is the replica's saturation throughput in requests/s; ``source`` says where
    the numbers came from ("measured", "profile", "hint").
    """

    prefill_s: float
    work_s: float
    source: str
    #: Squared CV of the prefill times (1: as exponential service).
    prefill_cv2: float = 1.0
    #: Prefill seconds and weights of the requests the SLO counts (empty: one at prefill_s).
    mix: tuple[tuple[float, float], ...] = ()
    #: Sequences a replica runs at once (None: no slot limit modelled).
    slots: float | None = None
    #: The decode model (:func:`decode_batch`): output tokens per request after the first
    #: (None: no decode model, the throughput bound on ``work_s`` applies), and one decode
    #: step's seconds as ``step_base_s + step_per_seq_s * batch`` at the mean context.
    decode_tokens: float | None = None
    step_base_s: float = 0.0
    step_per_seq_s: float = 0.0

    @property
    def service_rate(self) -> float:
        """Requests per second one replica completes when saturated."""
        return 1.0 / self.work_s


def erlang_c(servers: int, offered: float) -> float:
    """The M/M/c probability that an arrival waits (Erlang C) at offered load ``lambda/mu``.

    Computed with the numerically stable Erlang B recursion; 1.0 when ``offered >= servers``.
    """
    if servers <= 0 or offered >= servers:
        return 1.0
    if offered <= 0:
        return 0.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    rho = offered / servers
    return blocking / (1.0 - rho + rho * blocking)


def ttft_percentile(replicas: int, arrival_rate: float, capacity: ReplicaCapacity,
                    quantile: float, arrival_cv2: float = 1.0, service_cv2: float = 1.0) -> float:
    """Predicted TTFT at ``quantile`` (0-1) with ``replicas``; ``inf`` if they are overloaded."""
    if arrival_rate <= 0:
        return capacity.prefill_s
    if replicas <= 0:
        return math.inf
    mu = 1.0 / capacity.prefill_s
    if arrival_rate >= replicas * mu or arrival_rate * capacity.work_s >= replicas:
        return math.inf
    waits = erlang_c(replicas, arrival_rate / mu)
    tail = 1.0 - quantile
    if waits <= tail:
        return capacity.prefill_s
    variability = (arrival_cv2 + service_cv2) / 2.0
    wait = math.log(waits / tail) * variability / (replicas * mu - arrival_rate)
    return wait + capacity.prefill_s


def decode_batch(rate: float, capacity: ReplicaCapacity) -> float:
    """Sequences one replica decodes at once at ``rate`` requests/s in steady state (see the
    module docstring); ``inf`` when prefills and decode steps together cannot keep up, 0
    without a decode model or arrivals."""
    tokens = capacity.decode_tokens
    if tokens is None or rate <= 0:
        return 0.0
    demand = rate * tokens  # decode tokens per second
    free = 1.0 - rate * capacity.prefill_s - demand * capacity.step_per_seq_s
    if free <= 0:
        return math.inf
    return demand * capacity.step_base_s / free


def decode_replicas(arrival_rate: float, capacity: ReplicaCapacity,
                    max_utilization: float) -> int:
    """The fewest replicas whose steady decode batch (:func:`decode_batch`) stays within
    ``max_utilization`` of the slots (0 without a decode model or slot count, or arrivals)."""
    if capacity.decode_tokens is None or not capacity.slots or arrival_rate <= 0:
        return 0
    limit = max_utilization * capacity.slots
    for replicas in range(1, MAX_SEARCH_REPLICAS + 1):
        if decode_batch(arrival_rate / replicas, capacity) <= limit:
            return replicas
    return MAX_SEARCH_REPLICAS


def replicas_for_slo(arrival_rate: float, capacity: ReplicaCapacity, slo_s: float,
                     quantile: float, max_utilization: float, arrival_cv2: float = 1.0,
                     service_cv2: float = 1.0) -> int | None:
    """The fewest replicas whose predicted TTFT percentile meets ``slo_s`` at the rate.

    Also keeps the throughput utilization at most ``max_utilization``. Zero for no arrivals;
    None when no replica count can meet the SLO (the prefill alone exceeds it).
    """
    if arrival_rate <= 0:
        return 0
    if capacity.prefill_s > slo_s:
        return None
    start = max(1, math.ceil(arrival_rate * capacity.work_s / max_utilization))
    for replicas in range(start, MAX_SEARCH_REPLICAS + 1):
        predicted = ttft_percentile(replicas, arrival_rate, capacity, quantile, arrival_cv2,
                                    service_cv2)
        if predicted <= slo_s:
            return replicas
    return None


def _counted(capacity: ReplicaCapacity, slo_s: float) -> tuple[tuple[float, float], ...]:
    mix = capacity.mix or ((capacity.prefill_s, 1.0),)
    return tuple((p, w) for p, w in mix if p <= slo_s and w > 0)


def miss_fraction(replicas: int, arrival_rate: float, capacity: ReplicaCapacity, slo_s: float,
                  arrival_cv2: float = 1.0, arrival_batch: float = 1.0) -> float:
    """Predicted fraction of the requests the SLO can count (``capacity.mix`` atoms whose
    prefill fits in ``slo_s``) that still miss it with ``replicas`` (1.0 when overloaded, 0.0
    when no request can be counted). ``arrival_batch``: the index of dispersion of requests
    arriving together (:func:`batch_wait`; 1: one at a time)."""
    counted = _counted(capacity, slo_s)
    weight = math.fsum(w for _, w in counted)
    if weight <= 0 or arrival_rate <= 0:
        return 0.0
    mu = 1.0 / capacity.prefill_s
    if replicas <= 0 or arrival_rate >= replicas * mu:
        return 1.0
    waits = erlang_c(replicas, arrival_rate / mu)
    # Head-of-line blocking: once every replica is busy, a request waits behind the prefills
    # of the one replica it was routed to (each engine serves its own FCFS queue), not for the
    # first of the c to free: the M/G/1 tail of one replica at load lambda / c, whose
    # conditional mean wait is prefill * (ca2 + cs2) / 2 / (1 - rho) (Pollaczek-Khinchine),
    # with ca2 that of the replica's own share of the arrivals (split_cv2).
    variability = (split_cv2(arrival_cv2, replicas) + capacity.prefill_cv2) / 2.0
    theta = (mu - arrival_rate / replicas) / variability
    ahead, rate = batch_wait(replicas, arrival_batch, capacity.prefill_s)
    missed = math.fsum(w * min(1.0, _wait_beyond(slo_s - p, waits, theta, ahead, rate))
                       for p, w in counted)
    return missed / weight


def split_cv2(arrival_cv2: float, replicas: int) -> float:
    """The squared CV (index of dispersion) of one replica's share of arrivals whose whole
    stream has ``arrival_cv2``, spread over ``replicas``: ``ca2 / c + 1 - 1 / c``.

    That is exact for a random split (each arrival to one of ``c`` replicas with chance
    ``1 / c``: a count ``N`` thinned to ``N'`` has ``Var N' = Var N / c^2 + E N (1 - 1/c) / c``).
    A gateway that sends each arrival to the least busy replica splits a burst more evenly,
    so for it this errs high."""
    if replicas <= 1:
        return arrival_cv2
    return 1.0 + (arrival_cv2 - 1.0) / replicas


def batch_wait(replicas: int, arrival_batch: float, prefill_s: float) -> tuple[float, float]:
    """The wait behind batch-mates: the probability that a request arriving in a group has
    one ahead of it on its own replica, and the rate of that wait's exponential tail
    (``(0.0, inf)``: none, as with Poisson arrivals).

    With batch arrivals (M^X), the index of dispersion of the counts, ``I = E[X^2] / E[X]``,
    is the mean size of the batch a request arrives in, and the number of its batch-mates
    ahead of it has mean ``(I - 1) / 2`` for any batch-size law (its law is ``P(X > n) /
    E[X]``; geometric, ``P(>= n) = q^n``, for geometric batches: taken here, the
    largest-entropy law with that mean). The gateway spreads a batch over the ``c`` replicas,
    so ``n`` ahead in the batch puts ``floor(n / c)`` ahead on the request's own replica:
    some are with probability ``r = q^c``, and their prefills sum to a compound geometric,
    exponential of mean ``prefill / (1 - r)`` (exact for exponential prefills; the mean is
    exact for any). The M^X/G/1 mean wait is this plus the wait of the batch itself, the
    M/G/1 wait at ``ca2 = I`` (Pollaczek-Khinchine on batches as customers): both are in
    :func:`miss_fraction`, which reduces to the Poisson rule at ``I = 1``."""
    mean_ahead = (max(1.0, arrival_batch) - 1.0) / 2.0
    chance = (mean_ahead / (1.0 + mean_ahead)) ** max(1, replicas)
    if chance <= 0.0:
        return 0.0, math.inf
    return chance, (1.0 - chance) / prefill_s


def _wait_beyond(slack: float, waits: float, theta: float, ahead: float, rate: float) -> float:
    """``P(V + B > slack)`` for independent ``V`` (0 with probability ``1 - waits``, else
    exponential at rate ``theta``) and ``B`` (0 with probability ``1 - ahead``, else
    exponential at ``rate``): the queue's wait plus the batch-mates' prefills."""
    if slack <= 0:
        return 1.0
    queue = math.exp(-theta * slack)
    if ahead <= 0.0:
        return waits * queue
    batch = math.exp(-rate * slack)
    if math.isclose(rate, theta):
        both = (1.0 + theta * slack) * queue  # Erlang-2 tail
    else:  # hypoexponential tail of the sum of the two exponentials
        both = (rate * queue - theta * batch) / (rate - theta)
    return (waits * (1.0 - ahead) * queue + ahead * (1.0 - waits) * batch
            + waits * ahead * both)


def replicas_for_mix(arrival_rate: float, capacity: ReplicaCapacity, slo_s: float,
                     quantile: float, max_utilization: float, arrival_cv2: float = 1.0,
                     arrival_batch: float = 1.0) -> int:
    """The fewest replicas within the decode bound (:func:`decode_replicas`; the throughput
    bound without a decode model) whose predicted miss fraction (:func:`miss_fraction`) is at
    most ``1 - quantile``: the larger of the two bounds. The decode bound alone when no
    request's prefill fits in the SLO (more replicas would not help them), and
    :data:`MAX_SEARCH_REPLICAS` if none is found. Zero for no arrivals."""
    if arrival_rate <= 0:
        return 0
    if capacity.decode_tokens is not None:
        start = decode_replicas(arrival_rate, capacity, max_utilization)
    else:
        start = math.ceil(arrival_rate * capacity.work_s / max_utilization)
    start = max(1, start, math.floor(arrival_rate * capacity.prefill_s) + 1)
    if not _counted(capacity, slo_s):
        return start
    for replicas in range(start, MAX_SEARCH_REPLICAS + 1):
        if miss_fraction(replicas, arrival_rate, capacity, slo_s, arrival_cv2,
                         arrival_batch) <= 1 - quantile:
            return replicas
    return MAX_SEARCH_REPLICAS
