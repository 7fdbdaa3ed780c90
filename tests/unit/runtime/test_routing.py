"""The routing policies (pure: the clock is passed in)."""

from __future__ import annotations

import pytest

from kubeplex.runtime.prefix import NO_BLOCKS, PromptBlocks, chain
from kubeplex.runtime.routing import (
    LOAD_BOUND,
    LOAD_SLACK,
    ROUTER_BLOCK_SIZE,
    Cause,
    Policy,
    PrefixIndex,
    Request,
    Router,
    request_of,
)

REPLICAS = ("a", "b", "c", "d")


def _req(*ids: object, tokens: int | None = None, out: int = 10) -> Request:
    blocks = PromptBlocks(chain(ids), 100)
    return Request(blocks, tokens or len(ids) * 100 + 50, out)


def _router(policy: Policy = Policy.PREFIX_AWARE, capacity: int | None = None) -> Router:
    router = Router(policy)
    for key in REPLICAS:
        router.add(key, capacity)
    return router


def _route(router: Router, request: Request, now: float = 0.0) -> str:
    choice = router.choose(REPLICAS, request, now)
    key = REPLICAS[choice.index]
    router.sent(key, request, now)
    return key


def test_least_loaded_picks_the_fewest_in_flight_and_round_robin_takes_turns() -> None:
    least = _router(Policy.LEAST_LOADED)
    picks = [_route(least, _req(i)) for i in range(4)]
    assert sorted(picks) == sorted(REPLICAS)  # each got one, none twice
    turns = _router(Policy.ROUND_ROBIN)
    first = [REPLICAS[turns.choose(REPLICAS, _req(1), 0).index] for _ in range(8)]
    assert first[:4] == first[4:] and sorted(first[:4]) == sorted(REPLICAS)


def test_a_shared_prefix_goes_where_it_is_cached() -> None:
    router = _router()
    turn1 = _req("sys", "conv1", "turn1")
    home = REPLICAS[router.choose(REPLICAS, turn1, 0.0).index]
    first = router.sent(home, turn1, 0.0)
    others = [router.sent(k, _req(f"other{k}"), 0.0) for k in REPLICAS if k != home]
    router.started(first, 0.5)  # its first output: nothing queued at home any more
    for t in others:
        router.done(t, 0.6)
    choice = router.choose(REPLICAS, _req("sys", "conv1", "turn1", "turn2"), 1.0)
    assert REPLICAS[choice.index] == home
    assert choice.cause is Cause.PREFIX and choice.cached_tokens == 300


def test_with_no_prefix_anywhere_the_least_queued_prefill_wins() -> None:
    router = _router()
    router.sent("a", _req(tokens=5000), 0.0)
    router.sent("b", _req(tokens=100), 0.0)
    router.sent("c", _req(tokens=3000), 0.0)
    router.sent("d", _req(tokens=200), 0.0)
    choice = router.choose(REPLICAS, _req("new"), 0.0)
    assert REPLICAS[choice.index] == "b" and choice.cause is Cause.NO_PREFIX


def test_recomputing_elsewhere_wins_over_a_long_prefill_queue_at_the_cache() -> None:
    router = _router()
    home = _route(router, _req("p1", "p2"))  # 250 tokens, cached at home after this
    router.sent(home, _req(tokens=10_000), 0.0)  # a long prompt queued there
    choice = router.choose(REPLICAS, _req("p1", "p2", "p3"), 0.0)
    assert REPLICAS[choice.index] != home and choice.cause is Cause.LESS_QUEUED


def test_a_hot_prefix_spreads_within_the_load_bound() -> None:
    """Every request shares one long prefix and stays in flight: the replica caching it takes
    requests only while it is within LOAD_BOUND of the mean; the others then cache it too."""
    router = _router()
    for n in range(400):
        _route(router, _req("hot", "hot2", "hot3", f"user{n}"), now=0.0)
    loads = [router.in_flight(k) for k in REPLICAS]
    assert sum(loads) == 400
    assert max(loads) <= LOAD_BOUND * 100 + LOAD_SLACK + 1
    assert all(router.index(k).match(PromptBlocks(chain(["hot"]), 100)) for k in REPLICAS)


def _queues(router: Router) -> None:
    """a: 3000 tokens queued since t=0; b: 2000 since t=2; c, d: long queues."""
    router.sent("a", _req(tokens=3000), 0.0)
    router.sent("c", _req(tokens=9000), 0.0)
    router.sent("d", _req(tokens=9000), 1.0)
    router.sent("b", _req(tokens=2000), 2.0)


def test_queued_prefill_counts_down_at_the_measured_rate() -> None:
    router = _router()
    router.started(router.sent("d", _req(tokens=1000), 0.0), 1.0)  # 1000 tokens in 1 s
    assert router.prefill_rate == pytest.approx(1000.0)
    _queues(router)
    # At t=2, a has worked 2 s through its 3000 tokens: 1000 left, less than b's 2000.
    assert REPLICAS[router.choose(REPLICAS, _req("x"), 2.0).index] == "a"
    unmeasured = _router()
    _queues(unmeasured)  # no first output seen yet: no rate, the queues count in full
    assert REPLICAS[unmeasured.choose(REPLICAS, _req("x"), 2.0).index] == "b"


def test_prefill_sent_while_a_step_runs_waits_for_the_next_step() -> None:
    """An engine's step takes what waits when it starts: a prompt sent to a busy replica is
    not counted down before that replica's next first output (its next step), while the
    prefill of the running step is. b's queue is a fixed yardstick: beyond its KV capacity,
    it is not counted down."""
    router = Router(Policy.PREFIX_AWARE)
    router.add("a")
    router.add("b", 10_000)
    router.started(router.sent("a", _req(tokens=1000), 0.0), 1.0)  # 1000 tokens/s
    running = router.sent("a", _req(tokens=3000), 1.0)  # a is idle: a step starts with it
    router.sent("a", _req(tokens=2000), 1.5)  # sent while that step runs
    router.sent("b", _req(tokens=1800, out=9000), 1.5)  # 1800 queued, reserves 10,800
    # At t=4.5 a's running 3000 are counted down (0 left), its waiting 2000 not: 2000 > 1800.
    # Counting a's 5000 down as one would see 1500 there and pick a.
    assert router.choose(["a", "b"], _req("x"), 4.5).index == 1
    # The step ends at 5 s (3000 tokens in 4 s: the rate becomes 800 tokens/s) and the next
    # one takes the 2000 that waited: at t=6 they are 1200, less than b's 1800.
    router.started(running, 5.0)
    assert router.prefill_rate == pytest.approx(800.0)
    assert router.choose(["a", "b"], _req("x"), 6.0).index == 0


def test_a_batch_whose_first_outputs_come_microseconds_apart_measures_its_throughput() -> None:
    """Three 1000-token prompts prefilled in one 1 s step: 3000 tokens/s, not the 1000 of the
    first output nor the ~10^8 of the two that came out 10 µs after it."""
    router = _router()
    tickets = [router.sent("a", _req(tokens=1000), 0.0) for _ in range(3)]
    for k, ticket in enumerate(tickets):
        router.started(ticket, 1.0 + k * 1e-5)
    assert router.prefill_rate == pytest.approx(3000.0, rel=1e-3)


def test_a_replica_short_of_kv_cache_is_not_counted_down() -> None:
    """Requests that wait for memory start only as others finish: b's queue, beyond its KV
    capacity, stays in full while a's drains at the measured rate."""
    router = Router(Policy.PREFIX_AWARE)
    router.add("a", 10_000)
    router.add("b", 10_000)
    router.started(router.sent("a", _req(tokens=1000), 0.0), 1.0)  # 1000 tokens/s
    router.sent("a", _req(tokens=3000, out=10), 1.0)
    router.sent("b", _req(tokens=2500, out=9000), 1.0)  # reserves 11,500 of 10,000
    at_3s = router.choose(["a", "b"], _req("x"), 3.0)  # a: 1000 left; b: 2500, not 500
    assert at_3s.index == 0


def test_done_releases_load_and_a_removed_replica_is_forgotten() -> None:
    router = _router(Policy.LEAST_LOADED)
    ticket = router.sent("a", _req(1), 0.0)
    assert router.in_flight("a") == 1
    router.done(ticket, 1.0)
    router.done(ticket, 1.0)  # idempotent for the prefill part; in flight never negative
    assert router.in_flight("a") == 0
    router.remove("a")
    assert router.choose(("b",), _req(1), 0.0).cause is Cause.ONLY_REPLICA
    with pytest.raises(ValueError, match="no replica"):
        router.choose((), _req(1), 0.0)


def test_the_index_is_lru_and_bounded_in_tokens() -> None:
    index = PrefixIndex(capacity_tokens=300)
    index.add(PromptBlocks(chain(["a", "b"]), 100))
    index.add(PromptBlocks(chain(["c"]), 100))
    assert index.tokens == 300
    index.add(PromptBlocks(chain(["d"]), 100))  # evicts the oldest: "b" (tail of a, b)
    assert index.match(PromptBlocks(chain(["a", "b"]), 100)) == 1
    assert index.match(PromptBlocks(chain(["d"]), 100)) == 1 and index.tokens == 300


def test_request_of_reads_what_the_router_needs_and_never_raises() -> None:
    text = "x" * 800
    shape = request_of({"prompt": text, "max_tokens": 7}, chat=False)
    assert (shape.prompt_tokens, shape.max_tokens, len(shape.blocks.hashes)) == (200, 7, 3)
    assert shape.blocks.block_size == ROUTER_BLOCK_SIZE  # 200 tokens: 3 full blocks of 64
    chat = request_of({"messages": [{"role": "user", "content": text}],
                       "max_completion_tokens": 3}, chat=True)
    assert chat.max_tokens == 3 and chat.blocks.hashes
    hinted = request_of({"prompt_tokens": 9000, "block_hashes": [1, 2], "block_size": 512},
                        chat=False)
    assert hinted.prompt_tokens == 9000 and len(hinted.blocks.hashes) == 2
    broken = request_of({"block_hashes": "no", "max_tokens": "many"}, chat=False)
    assert broken.blocks is NO_BLOCKS and broken.max_tokens == 16 and broken.prompt_tokens == 1
