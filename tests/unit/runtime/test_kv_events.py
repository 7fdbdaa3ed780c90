"""KV events and queue reports: the sim engine publishes them, the router's index follows."""

from __future__ import annotations

import random

import pytest

from kubeplex.runtime.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EngineLoad,
    decode_load,
    encode_load,
)
from kubeplex.runtime.prefix import PromptBlocks, chain
from kubeplex.runtime.routing import Request, Router
from kubeplex.runtime.sim.prefix_cache import KVCache
from kubeplex.runtime.sim.scheduler import Scheduler, SimRequest

SIZE = 10


def _blocks(*ids: object) -> PromptBlocks:
    return PromptBlocks(chain(ids), SIZE)


def test_the_cache_publishes_stored_blocks_with_their_parent_and_evictions() -> None:
    cache = KVCache(40, publish_events=True)
    first = cache.allocate(_blocks("s", "a"), 21, 21)  # two full blocks and one token
    assert first is not None
    assert cache.take_events() == [BlockStored(chain(["s", "a"]), None, SIZE)]
    assert cache.take_events() == []  # taken
    cache.free(first)
    second = cache.allocate(_blocks("s", "b"), 21, 21)  # hits "s", stores "b" after it
    assert second is not None
    s, b = chain(["s", "b"])
    assert cache.take_events() == [BlockStored((b,), s, SIZE)]
    cache.free(second)
    third = cache.allocate(_blocks("x", "y", "z"), 31, 31)  # needs room: evicts LRU blocks
    assert third is not None
    removed, stored = cache.take_events()
    assert isinstance(removed, BlockRemoved) and removed.block_hashes
    assert stored == BlockStored(chain(["x", "y", "z"]), None, SIZE)
    assert all(cache.lookup(PromptBlocks((h,), SIZE), 11) == 0 for h in removed.block_hashes)
    quiet = KVCache(40)
    quiet.allocate(_blocks("s"), 11, 11)
    assert quiet.take_events() == []  # not recorded unless asked


def test_an_index_fed_by_events_holds_what_the_engine_caches() -> None:
    """Random prompts over few prefixes through a small cache: after every allocation the
    router's index, fed only the cache's events, matches every prompt as the cache does."""
    rng = random.Random(4)
    cache = KVCache(300, publish_events=True)
    router = Router("prefix-aware")
    router.add("r", 10**6)  # an index far larger than the cache: only events remove blocks
    live = []
    prompts = [_blocks(*[f"p{k}"] + [f"q{rng.randrange(3)}" for _ in range(rng.randrange(1, 6))])
               for k in range(6) for _ in range(3)]
    for _ in range(200):
        blocks = rng.choice(prompts)
        allocation = cache.allocate(blocks, blocks.tokens + 1, blocks.tokens + 5)
        if allocation is not None:
            live.append(allocation)
        if live and (allocation is None or rng.random() < 0.6):
            cache.free(live.pop(rng.randrange(len(live))))
        router.observe("r", cache.take_events())
        index = router.index("r")
        for p in prompts:
            assert index.match(p) * SIZE == cache.lookup(p, p.tokens + 1)
    router.observe("r", [AllBlocksCleared()])
    assert len(router.index("r")) == 0


def test_a_queue_report_replaces_the_routers_own_count() -> None:
    router = Router("prefix-aware")
    for key in ("a", "b"):
        router.add(key)
    router.started(router.sent("b", Request(PromptBlocks((), SIZE), 1000, 1), 0.0), 1.0)
    assert router.prefill_rate == pytest.approx(1000.0)  # tokens/s
    router.sent("a", Request(PromptBlocks((), SIZE), 5000, 1), 1.0)  # the router's count: a
    assert router.choose(["a", "b"], Request(PromptBlocks((), SIZE), 10, 1), 1.0).index == 1
    # a's engine says: nothing waiting, its step ends in 0.5 s (500 tokens at the rate); b's:
    # 2000 tokens waiting. Sent to b after its report: 100 more.
    router.observe("a", load=EngineLoad(1.0, 0, 1.5, 0))
    router.observe("b", load=EngineLoad(1.0, 2000, 1.0, 2))
    router.sent("b", Request(PromptBlocks((), SIZE), 100, 1), 1.0)
    request = Request(PromptBlocks((), SIZE), 10, 1)
    choice = router.choose(["a", "b"], request, 1.0)
    assert choice.index == 0 and "510 tokens" in choice.reason


def test_the_scheduler_reports_its_waiting_prefill_and_step_end() -> None:
    class Linear:
        def batch_prefill_seconds(self, prompts: object) -> float:
            return 1.0

        def decode_step_seconds(self, batch_size: int, mean_context_tokens: int) -> float:
            return 0.1

    scheduler = Scheduler(Linear(), 1000, max_num_seqs=1)
    assert scheduler.load(0.0) == EngineLoad(0.0, 0, 0.0, 0)
    scheduler.add(SimRequest("1", 300, 2, 0.0, blocks=_blocks("a", "b")))
    scheduler.step(0, 0.0)  # prefills "1" until t=1; a second request must wait
    scheduler.add(SimRequest("2", 250, 2, 0.5, blocks=_blocks("a", "c")))
    load = scheduler.load(0.5)
    assert load == EngineLoad(0.5, 250 - SIZE, 1.0, 1)  # block "a" is cached already


def test_a_load_event_round_trips_with_times_made_relative() -> None:
    """The engine's and the follower's clocks differ: the event carries how long the step
    has left, and the follower dates it on its own clock."""
    event = encode_load(EngineLoad(100.0, 1234, 100.25, 3))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert decode_load(event[6:].strip(), 7.0) == EngineLoad(7.0, 1234, 7.25, 3)
    assert decode_load(encode_load(EngineLoad(5.0, 0, 4.0, 0))[6:], 1.0) == \
        EngineLoad(1.0, 0, 1.0, 0)  # a step end in the past: idle now


@pytest.mark.parametrize(("data", "message"), [
    (b"{", "must be JSON"),
    (b"[1]", "must be a JSON object"),
    (b'{"waiting": 0, "step_ends_in_s": 0}', "prefill_tokens must be an integer >= 0, got None"),
    (b'{"prefill_tokens": -1, "waiting": 0, "step_ends_in_s": 0}', "prefill_tokens"),
    (b'{"prefill_tokens": 1, "waiting": true, "step_ends_in_s": 0}', "waiting"),
    (b'{"prefill_tokens": 1, "waiting": 0, "step_ends_in_s": "soon"}', "step_ends_in_s"),
    (b'{"prefill_tokens": 1, "waiting": 0, "step_ends_in_s": -2}', "step_ends_in_s"),
])
def test_a_bad_load_event_is_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_load(data, 0.0)


def test_without_reports_the_router_goes_back_to_its_own_count() -> None:
    router = Router("prefix-aware")
    for key in ("a", "b"):
        router.add(key)
    router.sent("a", Request(PromptBlocks((), SIZE), 5000, 1), 0.0)
    router.sent("b", Request(PromptBlocks((), SIZE), 1000, 1), 0.0)
    router.observe("a", load=EngineLoad(0.0, 0, 0.0, 0))  # a says it is idle
    router.observe("b", load=EngineLoad(0.0, 3000, 0.0, 1))
    request = Request(PromptBlocks((), SIZE), 10, 1)
    assert router.choose(["a", "b"], request, 0.0).index == 0
    router.forget_load("a")  # a's stream broke: its 5000 queued count again
    router.forget_load("b")
    assert router.choose(["a", "b"], request, 0.0).index == 1
