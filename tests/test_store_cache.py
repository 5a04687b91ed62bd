"""Results store and artifact cache: atomic, skip-finished, build-once."""

import threading
import time

import pandas as pd
import pytest

from bench.cache import ArtifactCache, ArtifactSpec
from bench.store import COLUMNS, ResultStore


def _spec(kind, name):
    return ArtifactSpec(kind, {"name": name})


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

    spec = _spec("base", "k1")
    threads = [threading.Thread(target=cache.get_or_build, args=(spec, build)) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1
    assert (cache.path(spec) / "weights.bin").read_text() == "w"


def test_failed_build_leaves_nothing_behind(tmp_path):
    cache = ArtifactCache(tmp_path, verbose=False)

    def broken(d):
        (d / "half.bin").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build(_spec("teachers", "k2"), broken)
    assert not cache.exists(_spec("teachers", "k2"))
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

    spec = ArtifactSpec("snap", {"steps": 3})
    lock = tmp_path / "snap" / f".{spec.key}.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:  # another builder of it at work
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cache.publish(spec, build) is False
    assert not cache.exists(spec) and not calls
    assert cache.publish(spec, build) is True
    assert cache.exists(spec) and (cache.path(spec) / "config.json").exists()
    assert cache.publish(spec, build) is False
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

    code = ("import sys, time; from bench.cache import ArtifactCache, ArtifactSpec\n"
            "def build(d):\n    (d / 'half.bin').write_text('x'); print('building', flush=True); time.sleep(60)\n"
            "ArtifactCache(sys.argv[1], verbose=False).get_or_build(ArtifactSpec('teachers', {'name': 'k0'}), build)\n")
    k0, k9, k5 = _spec("teachers", "k0"), _spec("teachers", "k9"), _spec("base", "k5")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "building"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = tmp_path / "teachers" / f".tmp-{k0.key}-{proc.pid}"
    assert (killed / "half.bin").exists()  # what the killed build left
    elsewhere = tmp_path / "teachers" / f".tmp-{k9.key}-{proc.pid}"  # pid dead here, builder alive on another node
    other_kind = tmp_path / "base" / f".tmp-{k5.key}-{proc.pid}"
    for d in (elsewhere, other_kind):
        d.mkdir(parents=True)

    cache = ArtifactCache(tmp_path, verbose=False)
    with (tmp_path / "teachers" / f".{k9.key}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        cache.get_or_build(_spec("teachers", "k1"), lambda d: (d / "w.bin").write_text("w"))
    assert not killed.exists() and elsewhere.exists() and other_kind.exists()
    cache.get_or_build(k0, lambda d: (d / "w.bin").write_text("w"))  # the killed one, rebuilt
    assert cache.exists(k0) and not elsewhere.exists()  # its lock is free now
    cache.get_or_build(k5, lambda d: (d / "w.bin").write_text("w"))
    assert not other_kind.exists()


def test_an_artifact_records_the_inputs_its_key_hashes(tmp_path):
    """``config.json`` next to an artifact holds its spec's inputs, in the hashed order: read
    back, they hash to the artifact's directory name. The key is ``config_hash`` of the inputs'
    values, as the keys written by hand before specs were (a user's cache keeps its keys)."""
    import json
    from pathlib import Path

    from bench.cache import key_of_record
    from bench.config import LoraTrainConfig, config_hash

    spec = ArtifactSpec("teachers", {"base": "abc", "teacher": LoraTrainConfig(rank=4), "prompt": "make it sepia",
                                     "sources": [Path("img/0.png")], "pair": (1, 2.5), "extra": None})
    assert spec.key == config_hash("abc", LoraTrainConfig(rank=4), "make it sepia", [Path("img/0.png")], (1, 2.5), None)
    path = ArtifactCache(tmp_path, verbose=False).get_or_build(spec, lambda d: (d / "w.bin").write_text("w"))
    stored = json.loads((path / "config.json").read_text())
    assert path.name == spec.key == stored["key"] == key_of_record(stored)
    assert list(stored["inputs"]) == ["base", "teacher", "prompt", "sources", "pair", "extra"]
    assert stored["inputs"]["teacher"]["rank"] == 4 and stored["kind"] == "teachers"


def test_a_shipped_artifact_is_copied_in_instead_of_built(tmp_path, capsys):
    """A missing artifact whose key ships with the package is installed from the shipped copy
    (its files and its own cost record), never built; a cache told to ignore shipped artifacts
    builds it."""
    import json

    spec = _spec("base", "k0")
    shipped = tmp_path / "assets" / "base" / spec.key
    shipped.mkdir(parents=True)
    (shipped / "transformer").mkdir()
    for name, text in [("w.bin", "pretrained"), ("cost.json", '{"forward": 7}'), ("DONE", ""), ("config.json", "{}"),
                       ("transformer/config.json", '{"layers": 2}')]:
        (shipped / name).write_text(text)

    def build(d):
        raise AssertionError("built although shipped")

    path = ArtifactCache(tmp_path / "c", shipped=tmp_path / "assets").get_or_build(spec, build)
    assert (path / "w.bin").read_text() == "pretrained" and (path / "cost.json").read_text() == '{"forward": 7}'
    assert (path / "DONE").exists() and json.loads((path / "config.json").read_text())["key"] == spec.key
    assert (path / "transformer" / "config.json").read_text() == '{"layers": 2}'  # a nested config is data
    assert "copying shipped" in capsys.readouterr().out
    rebuilt = ArtifactCache(tmp_path / "c2", shipped=None).get_or_build(spec, lambda d: (d / "w.bin").write_text("new"))
    assert (rebuilt / "w.bin").read_text() == "new"


def test_the_shipped_base_is_the_default_presets():
    """The base shipped in bench/assets has the key the default preset's base spec gives and
    records the same inputs, so a fresh machine copies it instead of pretraining. When this
    fails, the world's general edits, the backbone or the pretraining changed: rebuild it with
    ``python -m bench.assets`` and commit bench/assets/."""
    import json

    from bench.assets import PRESETS
    from bench.cache import SHIPPED
    from bench.config import PRESETS as CONFIGS
    from bench.workspace import Workspace

    keys = set()
    for preset in PRESETS:
        spec = Workspace(CONFIGS.get(preset)(), ArtifactCache(verbose=False)).base_spec
        shipped = SHIPPED / spec.kind / spec.key
        assert (shipped / "DONE").exists(), f"{preset}: no shipped base {spec.key}; run python -m bench.assets"
        assert json.loads((shipped / "config.json").read_text()) == json.loads(json.dumps(spec.record(), default=str))
        keys.add(spec.key)
    assert {p.name for p in (SHIPPED / "base").iterdir()} == keys  # no stale bases in the package


@pytest.mark.e2e  # builds the default preset's world (about 35 s) to know its teachers' keys
def test_the_default_presets_teachers_are_shipped(tmp_path):
    """Every artifact ``bench.assets`` ships for the default preset -- its base and the teachers of
    its default effects -- is in the package under the key the preset gives and records the same
    inputs, and the package holds nothing else, so the README's first command copies them in and
    trains nothing. When this fails, rebuild with ``python -m bench.assets`` and commit bench/assets/."""
    import json

    from bench.assets import KINDS, PRESETS, shipped_specs
    from bench.cache import SHIPPED
    from bench.config import PRESETS as CONFIGS
    from bench.workspace import Workspace

    keys = {kind: set() for kind in KINDS}
    for preset in PRESETS:
        ws = Workspace(CONFIGS.get(preset)(), ArtifactCache(tmp_path / "cache", shipped=None, verbose=False))
        specs = shipped_specs(ws)
        assert [s.kind for s in specs].count("teachers") == ws.cfg.n_effects
        for spec in specs:
            shipped = SHIPPED / spec.kind / spec.key
            assert (shipped / "DONE").exists(), f"{preset}: no shipped {spec.describe()}; run python -m bench.assets"
            record = json.loads(json.dumps(spec.record(), default=str))
            assert json.loads((shipped / "config.json").read_text()) == record
            keys[spec.kind].add(spec.key)
    for kind in KINDS:
        assert {p.name for p in (SHIPPED / kind).iterdir()} == keys[kind]  # nothing stale in the package


def test_the_assets_check_names_the_files_a_rebuild_changed(tmp_path):
    """``python -m bench.assets --check`` compares a rebuild with the shipped files byte by byte;
    the cost record (its seconds differ from run to run) is not compared."""
    from bench.assets.__main__ import _differences

    a, b = tmp_path / "rebuilt", tmp_path / "shipped"
    for d, weights, seconds in ((a, b"\x00\x01", "1.0"), (b, b"\x00\x01", "2.0")):
        (d / "transformer").mkdir(parents=True)
        (d / "transformer" / "w.safetensors").write_bytes(weights)
        (d / "cost.json").write_text(seconds)
    assert _differences(a, b) == []
    (a / "transformer" / "w.safetensors").write_bytes(b"\x00\x02")
    (b / "loss.csv").write_text("step,loss")
    assert _differences(a, b) == ["loss.csv", "transformer/w.safetensors"]
