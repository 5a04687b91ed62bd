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


def test_a_killed_build_leaves_a_temp_dir_the_next_build_of_its_kind_removes(tmp_path):
    """``kill -9`` mid-build leaves ``.tmp-<key>-<pid>``: the next build of that kind removes it,
    unless its key's build lock is held (a builder on another node of a shared cache, whose pid
    means nothing here); other kinds' leftovers wait for a build of their own kind."""
    import fcntl
    import os
    import signal
    import subprocess
    import sys

    code = ("import sys, time; from bench.cache import ArtifactCache\n"
            "def build(d):\n    (d / 'half.bin').write_text('x'); print('building', flush=True); time.sleep(60)\n"
            "ArtifactCache(sys.argv[1], verbose=False).get_or_build('teachers', 'k0', build)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "building"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = tmp_path / "teachers" / f".tmp-k0-{proc.pid}"
    assert (killed / "half.bin").exists()  # what the killed build left
    elsewhere = tmp_path / "teachers" / f".tmp-k9-{proc.pid}"  # pid dead here, builder alive on another node
    other_kind = tmp_path / "base" / f".tmp-k5-{proc.pid}"
    for d in (elsewhere, other_kind):
        d.mkdir(parents=True)

    cache = ArtifactCache(tmp_path, verbose=False)
    with (tmp_path / "teachers" / ".k9.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        cache.get_or_build("teachers", "k1", lambda d: (d / "w.bin").write_text("w"))
    assert not killed.exists() and elsewhere.exists() and other_kind.exists()
    cache.get_or_build("teachers", "k0", lambda d: (d / "w.bin").write_text("w"))  # the killed one, rebuilt
    assert cache.exists("teachers", "k0") and not elsewhere.exists()  # its lock is free now
    cache.get_or_build("base", "k5", lambda d: (d / "w.bin").write_text("w"))
    assert not other_kind.exists()
