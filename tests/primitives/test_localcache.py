"""The bounded TTL/LRU cache on a clock the test moves (no I/O, no sleeping)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from primitives.localcache import LocalCache
from tests.primitives.conftest import Clock


def test_each_entry_expires_at_its_own_deadline() -> None:
    clock = Clock()
    cache: LocalCache[str] = LocalCache(10, clock=clock)
    cache.set("short", "S", 1)
    cache.set("long", "L", 10)
    cache.set("forever", "F")  # no TTL given and none by default: until evicted
    clock.now += 1  # a deadline is exclusive: at it, the entry is gone
    assert cache.get("short") is None
    assert cache.get("long") == "L"
    clock.now += 9
    assert cache.get("long") is None
    clock.now += 1e9
    assert cache.get("forever") == "F"


def test_default_ttl_applies_unless_an_entry_names_its_own() -> None:
    clock = Clock()
    cache: LocalCache[int] = LocalCache(10, ttl=5, clock=clock)
    cache.set("default", 1)
    cache.set("own", 2, 50)
    clock.now += 5
    assert cache.get("default") is None
    assert cache.get("own") == 2


def test_a_lifetime_already_over_removes_the_old_entry() -> None:
    clock = Clock()
    cache: LocalCache[str] = LocalCache(10, clock=clock)
    cache.set("k", "old", 10)
    cache.set("k", "new", 0)
    assert cache.get("k") is None
    cache.set("k", "new", -1)
    assert len(cache) == 0


def test_least_recently_used_is_evicted_and_reported() -> None:
    evicted: list[tuple[Hashable, str]] = []
    cache: LocalCache[str] = LocalCache(2, on_evict=lambda k, v: evicted.append((k, v)))
    cache.set("a", "A")
    cache.set("b", "B")
    assert cache.get("a") == "A"  # a becomes the most recently used
    cache.set("c", "C")
    assert cache.get("b") is None
    assert cache.get("a") == "A"
    assert cache.get("c") == "C"
    assert evicted == [("b", "B")]
    cache.set("a", "A2")  # replacing a value evicts nothing
    assert evicted == [("b", "B")]
    assert len(cache) == 2


def test_delete_delete_where_and_clear() -> None:
    clock = Clock()
    cache: LocalCache[int] = LocalCache(10, clock=clock)
    for tenant in ("t1", "t2"):
        for version in (1, 2):
            cache.set((tenant, version), version, 10)
    assert cache.delete(("t1", 1)) is True
    assert cache.delete(("t1", 1)) is False  # nothing left to delete
    cache.set("expired", 0, 1)
    clock.now += 1
    assert cache.delete("expired") is False  # held, but not live
    assert cache.delete_where(lambda k: isinstance(k, tuple) and k[0] == "t2") == 2
    assert cache.get(("t1", 2)) == 2
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    assert cache.get(("t1", 2)) is None


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LocalCache(0)


# Operations on a cache of 3 entries, against a plain model of LRU order and deadlines.
KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
SET = st.tuples(st.just("set"), KEYS, st.integers(0, 100), st.sampled_from([None, 0, 1, 5]))
OPS = st.lists(
    st.one_of(
        SET,
        SET,  # sets twice as likely: the cache must fill up for eviction to happen
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("tick"), st.sampled_from([0.5, 1, 3])),
    ),
    min_size=10,
    max_size=80,
)


@given(OPS)
def test_behaves_like_an_lru_of_deadlines(ops: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    cache: LocalCache[int] = LocalCache(3, clock=clock)
    model: OrderedDict[str, tuple[float, int]] = OrderedDict()  # least recently used first

    def live(key: str) -> int | None:
        held = model.get(key)
        return held[1] if held is not None and held[0] > clock.now else None

    for op in ops:
        match op:
            case ("set", key, value, ttl):
                cache.set(key, value, ttl)
                model.pop(key, None)
                lifetime = math.inf if ttl is None else ttl
                if lifetime > 0:
                    model[key] = (clock.now + lifetime, value)
                    while len(model) > 3:
                        model.popitem(last=False)
            case ("get", key):
                expected = live(key)
                if expected is not None:
                    model.move_to_end(key)
                else:
                    model.pop(key, None)  # an expired entry is dropped when read
                assert cache.get(key) == expected
            case ("delete", key):
                expected = live(key)
                model.pop(key, None)
                assert cache.delete(key) is (expected is not None)
            case ("tick", seconds):
                clock.now += seconds
        assert len(cache) == len(model)


def test_shorten_caps_remaining_lifetimes() -> None:
    clock = Clock()
    cache: LocalCache[int] = LocalCache(10, clock=clock)
    cache.set("long", 300, ttl=300)
    cache.set("short", 2, ttl=2)
    assert cache.shorten(lambda value: 5.0) == 1  # only "long" had more than 5 s left
    clock.now += 4
    assert cache.get("long") == 300
    assert cache.get("short") is None
    clock.now += 2
    assert cache.get("long") is None
