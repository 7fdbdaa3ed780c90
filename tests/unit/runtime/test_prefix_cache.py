"""Prompt block hashes and the sim's KV cache with vLLM-style prefix caching (pure)."""

from __future__ import annotations

import pytest

from kubeplex.runtime.prefix import VLLM_BLOCK_SIZE, PromptBlocks, chain, prompt_blocks
from kubeplex.runtime.sim.prefix_cache import KVCache

WIDTH = VLLM_BLOCK_SIZE * 4  # characters per block of text (4 characters a token)


def _blocks(*ids: object, size: int = 10) -> PromptBlocks:
    return PromptBlocks(chain(ids), size)


# ---- hashing ----------------------------------------------------------------------------

def test_equal_text_prefixes_give_equal_leading_hashes_and_partial_blocks_none() -> None:
    shared = "s" * (2 * WIDTH)
    a = prompt_blocks({"prompt": shared + "a" * WIDTH + "tail"})
    b = prompt_blocks({"prompt": shared + "b" * WIDTH})
    assert len(a.hashes) == 3 and len(b.hashes) == 3  # the partial "tail" is not hashed
    assert a.hashes[:2] == b.hashes[:2] and a.hashes[2] != b.hashes[2]
    assert prompt_blocks({"prompt": "short"}).hashes == ()


def test_hashes_are_chained_so_an_equal_block_after_a_different_prefix_differs() -> None:
    one, two = chain(["x", "same"]), chain(["y", "same"])
    assert one[1] != two[1]
    assert chain(["x", "same"]) == one  # deterministic across calls (and processes)


def test_chat_messages_token_ids_and_given_block_hashes() -> None:
    system = {"role": "system", "content": "rules " * 100}
    first = prompt_blocks({"messages": [system, {"role": "user", "content": "hi"}]}, chat=True)
    second = prompt_blocks({"messages": [system, {"role": "user", "content": "bye"}]}, chat=True)
    assert first.hashes and first.hashes[:-1] == second.hashes[:-1]
    tokens = prompt_blocks({"prompt": list(range(40))})
    assert len(tokens.hashes) == 40 // VLLM_BLOCK_SIZE
    given = prompt_blocks({"block_hashes": [7, 8, 9], "block_size": 512})
    assert given == PromptBlocks(chain([7, 8, 9]), 512) and given.tokens == 1536


@pytest.mark.parametrize(("body", "field"), [
    ({"block_hashes": "abc"}, "block_hashes"),
    ({"block_hashes": [1.5]}, "block id"),
    ({"block_hashes": [True]}, "block id"),
    ({"block_hashes": [1], "block_size": 0}, "block_size"),
])
def test_malformed_block_hashes_are_refused_naming_the_field(body: dict[str, object],
                                                             field: str) -> None:
    with pytest.raises(ValueError, match=field):
        prompt_blocks(body)


# ---- the cache --------------------------------------------------------------------------

def test_a_repeated_prefix_hits_and_only_full_leading_blocks_count() -> None:
    cache = KVCache(1000)
    first = cache.allocate(_blocks(1, 2, 3), prompt_tokens=35, total_tokens=40)
    assert first is not None and first.cached_tokens == 0
    cache.free(first)
    again = cache.allocate(_blocks(1, 2, 4), prompt_tokens=35, total_tokens=40)
    assert again is not None and again.cached_tokens == 20  # blocks 1 and 2
    # A fully cached prompt still recomputes its last token (vLLM's max_cache_hit_length).
    cache.free(again)
    whole = cache.allocate(_blocks(1, 2, 3), prompt_tokens=30, total_tokens=35)
    assert whole is not None and whole.cached_tokens == 20


def test_shared_blocks_are_held_once_and_usage_excludes_free_cached_blocks() -> None:
    cache = KVCache(100)
    a = cache.allocate(_blocks(1, 2), prompt_tokens=20, total_tokens=30)
    b = cache.allocate(_blocks(1, 2), prompt_tokens=21, total_tokens=30)
    assert a is not None and b is not None and b.cached_tokens == 20
    assert cache.used == 30 + 10  # a's 30, b's 10 new: the 20 shared tokens count once
    cache.free(a)
    cache.free(b)
    assert cache.used == 0 and cache.usage == 0.0
    assert cache.lookup(_blocks(1, 2, 3), 31) == 20  # still cached while free


def test_eviction_is_lru_and_a_prompt_tail_goes_before_its_head() -> None:
    cache = KVCache(40)
    old = cache.allocate(_blocks("a", "b"), prompt_tokens=20, total_tokens=20)
    assert old is not None
    cache.free(old)
    newer = cache.allocate(_blocks("c"), prompt_tokens=10, total_tokens=10)
    assert newer is not None
    cache.free(newer)
    # 10 free tokens never cached + 30 cached: a 20-token request evicts one cached block,
    # the oldest tail ("b"); "a" (freed after it) and "c" stay.
    big = cache.allocate(_blocks("z"), prompt_tokens=20, total_tokens=20)
    assert big is not None
    assert cache.lookup(_blocks("a", "b"), 21) == 10
    assert cache.lookup(_blocks("c"), 11) == 10


def test_a_request_that_does_not_fit_changes_nothing() -> None:
    cache = KVCache(50)
    held = cache.allocate(_blocks(1), prompt_tokens=10, total_tokens=40)
    assert held is not None
    assert cache.allocate(_blocks(2), prompt_tokens=10, total_tokens=20) is None
    assert cache.used == 40
    cache.free(held)
    assert cache.allocate(_blocks(2), prompt_tokens=10, total_tokens=20) is not None


def test_hit_blocks_revived_from_the_free_list_count_against_free_space() -> None:
    cache = KVCache(40)
    first = cache.allocate(_blocks(1, 2), prompt_tokens=20, total_tokens=20)
    assert first is not None
    cache.free(first)  # 20 cached free + 20 never used
    blocker = cache.allocate(_blocks(9), prompt_tokens=5, total_tokens=20)
    assert blocker is not None  # takes the 20 never-used tokens
    # Reusing 1,2 (20 tokens) leaves no room for 5 more: refused, the cache intact.
    assert cache.allocate(_blocks(1, 2), prompt_tokens=25, total_tokens=25) is None
    assert cache.lookup(_blocks(1, 2), 25) == 20


def test_without_prefix_caching_nothing_is_reused() -> None:
    cache = KVCache(100, prefix_caching=False)
    first = cache.allocate(_blocks(1, 2), prompt_tokens=25, total_tokens=30)
    assert first is not None
    cache.free(first)
    again = cache.allocate(_blocks(1, 2), prompt_tokens=25, total_tokens=30)
    assert again is not None and again.cached_tokens == 0
