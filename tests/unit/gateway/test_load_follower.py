"""The gateway's engine-load follower keeps one task per followed replica."""

from __future__ import annotations

import asyncio

from kubeplex.gateway._load import LoadFollower


class _Replica:
    name = "m"
    base_url = "http://127.0.0.1:9"


async def test_following_again_after_forget_survives_the_old_tasks_end() -> None:
    """A replica forgotten and followed again at once: the cancelled task's end must not
    untrack the new one (it would run on untracked, past close)."""
    follower = LoadFollower(lambda: None, lambda replica, load: None)  # no session: it waits
    replica = _Replica()
    follower.follow(replica)
    await asyncio.sleep(0)
    follower.forget(replica)
    follower.follow(replica)
    await asyncio.sleep(0.01)  # the first task's cancellation completes
    assert follower.following(replica)
    await follower.close()
    await asyncio.sleep(0)
    assert not follower.following(replica)
