"""Weight resolution: a missing weight fails fast with one clear message; local copies are found."""

from __future__ import annotations

import time

import pytest
import torch

from metrics import METRICS, EvalBatch, MetricUnavailable
from metrics.weights import MissingWeights, WeightRequest, fingerprint, hf_cached_file, resolve_dir, resolve_file


@pytest.fixture
def offline_empty(tmp_path, monkeypatch):
    """No weights anywhere: empty weights dir, HF cache and home; no judge configured."""
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_METRIC_CACHE", "off")
    for var in ("BENCH_CLIP_WEIGHTS", "BENCH_DINO_WEIGHTS", "BENCH_DREAMSIM_DIR", "BENCH_JUDGE_URL",
                "BENCH_JUDGE_MODEL_PATH", "BENCH_EDITREWARD_PATH", "BENCH_EDITREWARD_BASE", "BENCH_JUDGE",
                "BENCH_CLIP_MODEL", "BENCH_DINO_MODEL", "BENCH_DREAMSIM_TYPE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _batch(n: int = 2) -> EvalBatch:
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.rand(n, 3, 16, 16, generator=g)  # noqa: E731
    return EvalBatch(img(), img(), ["make it blue"] * n, img(), img(), img(), ["criteria"] * n)


@pytest.mark.parametrize("name, needle", [
    ("clip", "BENCH_CLIP_WEIGHTS"),
    ("dino", "BENCH_DINO_WEIGHTS"),
    ("dreamsim", "dreamsim_type='ensemble'"),
    ("editreward", "BENCH_EDITREWARD_PATH"),
    ("vsa", "BENCH_JUDGE_URL"),
    ("bcr", "BENCH_JUDGE_URL"),
])
def test_missing_weights_fail_fast_with_one_clear_message(offline_empty, name, needle):
    metric = METRICS.get(name)()           # construction is cheap and never touches weights
    start = time.perf_counter()
    with pytest.raises(MetricUnavailable) as err:
        metric.score(_batch())
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name}: missing weights took {elapsed:.2f}s to report"
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert "not found" in message or "missing" in message or "no MLLM judge" in message


def test_missing_message_names_places_and_download_command(offline_empty):
    with pytest.raises(MissingWeights) as err:
        METRICS.get("dino")().score(_batch())
    message = str(err.value)
    assert "timm/vit_base_patch16_224.dino" in message
    assert str(offline_empty / "weights") in message and "hf download" in message and "HF cache" in message


def test_explicit_path_that_does_not_exist_is_not_silently_replaced(offline_empty, monkeypatch):
    # A copy in the weights dir must not hide a wrong explicit path.
    good = offline_empty / "weights" / "timm" / "vit_base_patch16_224.dino" / "model.safetensors"
    good.parent.mkdir(parents=True)
    good.write_bytes(b"x")
    monkeypatch.setenv("BENCH_DINO_WEIGHTS", str(offline_empty / "nope.safetensors"))
    with pytest.raises(MissingWeights, match="nope.safetensors"):
        METRICS.get("dino")().score(_batch())


def test_missing_dreamsim_lists_every_missing_file(offline_empty):
    folder = offline_empty / "weights" / "dreamsim"
    (folder / "ensemble_lora").mkdir(parents=True)
    (folder / "ensemble_lora" / "adapter_config.json").write_text("{}")
    with pytest.raises(MissingWeights) as err:
        METRICS.get("dreamsim")().score(_batch())
    message = str(err.value)
    for name in ("dino_vitb16_pretrain.pth", "clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_pretrain.pth.tar",
                 "facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth",
                 "ensemble_lora/adapter_model.safetensors"):
        assert name in message
    assert "ensemble_lora/adapter_config.json" not in message


def test_evaluation_rows_say_missing_and_why(offline_empty):
    """What bench.evaluate does per metric: MetricUnavailable -> status "missing", the note says why."""
    notes = {}
    for name in ("clip", "dino", "dreamsim", "vsa", "bcr", "editreward"):
        try:
            METRICS.get(name)().score(_batch())
        except MetricUnavailable as err:
            notes[name] = str(err)
    assert set(notes) == {"clip", "dino", "dreamsim", "vsa", "bcr", "editreward"}
    assert all(len(note) > 40 for note in notes.values())


def _fake_hf_cache(root, repo, files, commit="abc123"):
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


def test_resolution_order_explicit_then_weights_dir_then_hf_cache(offline_empty):
    repo, name = "timm/some_vit.dino", "model.safetensors"
    req = WeightRequest(what="w", env="X", repo=repo, filenames=(name,))
    snap = _fake_hf_cache(offline_empty / "hf", repo, {name: "hf"})
    assert resolve_file(req) == snap / name
    assert hf_cached_file(repo, name) == snap / name
    local = offline_empty / "weights" / repo / name
    local.parent.mkdir(parents=True)
    local.write_text("local")
    assert resolve_file(req) == local
    explicit = offline_empty / "mine.safetensors"
    explicit.write_text("mine")
    request = WeightRequest(what="w", env="X", explicit=str(explicit), repo=repo, filenames=(name,))
    assert resolve_file(request) == explicit


def test_resolve_dir_checks_shards(offline_empty):
    snap = _fake_hf_cache(offline_empty / "hf", "Qwen/Tiny", {
        "config.json": "{}", "tokenizer_config.json": "{}",
        "model.safetensors.index.json": '{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}',
        "model-1.safetensors": ""})
    req = WeightRequest(what="judge", env="J", repo="Qwen/Tiny")
    with pytest.raises(MissingWeights, match="model-2.safetensors"):
        resolve_dir(req)
    (snap / "model-2.safetensors").write_text("")
    assert resolve_dir(req) == snap
    assert resolve_dir(req, ("config.json", "tokenizer_config.json"), weights=False) == snap


def test_fingerprint_changes_with_the_file(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"1")
    before = fingerprint(f)
    f.write_bytes(b"22")
    assert fingerprint(f) != before
    # the same weights moved elsewhere keep their cached features (one fingerprint policy)
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "w.bin").write_bytes(b"22")
    assert fingerprint(tmp_path / "moved" / "w.bin") == fingerprint(f)
