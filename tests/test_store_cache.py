"""Results store and artifact cache: atomic, skip-finished, build-once."""

import threading
import time

import pandas as pd
import pytest

from bench.cache import ArtifactCache
from bench.store import COLUMNS, ResultStore


def _rows(n=3):
    return pd.DataFrame([{c: 0 for c in COLUMNS} | {"metric": "gt_psnr", "value": float(i), "status": "ok"}
                         for i in range(n)])


def test_cell_is_done_only_after_rows_written(tmp_path):
    store = ResultStore(tmp_path)
    assert not store.is_done("abc")
    store.write_rows("abc", _rows())
    assert store.is_done("abc")
    assert len(store.read_all()) == 3
    assert not list((tmp_path / "cells" / "abc").glob("*.tmp*"))


def test_rows_missing_columns_rejected(tmp_path):
    with pytest.raises(ValueError, match="lack columns"):
        ResultStore(tmp_path).write_rows("abc", pd.DataFrame({"value": [1.0]}))


def test_cache_builds_once_under_concurrency(tmp_path):
    cache = ArtifactCache(tmp_path, verbose=False)
    calls = []

    def build(d):
        calls.append(1)
        time.sleep(0.2)
        (d / "weights.bin").write_text("w")

    threads = [threading.Thread(target=cache.get_or_build, args=("base", "k1", build)) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1
    assert (cache.path("base", "k1") / "weights.bin").read_text() == "w"


def test_failed_build_leaves_nothing_behind(tmp_path):
    cache = ArtifactCache(tmp_path, verbose=False)

    def broken(d):
        (d / "half.bin").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build("teachers", "k2", broken)
    assert not cache.exists("teachers", "k2")
    assert not [p for p in (tmp_path / "teachers").iterdir() if not p.name.endswith(".lock")]


def test_publish_never_waits_for_a_builder_and_never_rebuilds(tmp_path):
    """Snapshots published during training: built when missing, skipped (not awaited) while
    another process holds the artifact's lock, never built twice."""
    import fcntl

    cache = ArtifactCache(tmp_path, verbose=False)
    calls = []

    def build(out):
        calls.append(out)
        (out / "lora.bin").write_text("x")

    lock = tmp_path / "snap" / ".k1.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:  # another builder of k1 at work
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cache.publish("snap", "k1", build) is False
    assert not cache.exists("snap", "k1") and not calls
    assert cache.publish("snap", "k1", build, config={"steps": 3}) is True
    assert cache.exists("snap", "k1") and (cache.path("snap", "k1") / "config.json").exists()
    assert cache.publish("snap", "k1", build) is False
    assert len(calls) == 1
