"""CLIP / DINO / DreamSim on tiny random backbones loaded through the real loading code."""

from __future__ import annotations

import pytest
import torch

from metrics import EvalBatch
from metrics.cache import MetricCache, forward_counts, reset_counts
from metrics.clip import ClipConfig, ClipScore, _tag_info
from metrics.dino import DinoScore
from metrics.dreamsim import DreamSimDistance


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from metrics import tiny

    root = tmp_path_factory.mktemp("tiny-backbones")
    return {"clip": (ClipScore, tiny.tiny_open_clip(root / "clip")),
            "dino": (DinoScore, tiny.tiny_dino(root / "dino")),
            "dreamsim": (DreamSimDistance, tiny.tiny_dreamsim(root / "dreamsim"))}


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _batch(results: torch.Tensor, other: torch.Tensor) -> EvalBatch:
    """``other`` fills both the source and the reference slot, whichever the metric compares with."""
    return EvalBatch(results, other, ["make it blue"] * len(results), None, other)


@pytest.mark.parametrize("name", ["clip", "dino", "dreamsim"])
def test_identical_images_score_as_identical_and_direction_holds(tiny, name):
    cls, cfg = tiny[name]
    metric = cls(cfg, cache=False)
    images = _images(4, 0)
    same = torch.tensor(metric.score(_batch(images, images.clone())))
    different = torch.tensor(metric.score(_batch(_images(4, 1), images)))
    best = 0.0 if name == "dreamsim" else 1.0
    assert torch.allclose(same, torch.full_like(same, best), atol=1e-5)
    if metric.info.higher_is_better:
        assert (different < same - 1e-4).all()
    else:
        assert (different > same + 1e-4).all()


@pytest.mark.parametrize("name", ["clip", "dino", "dreamsim"])
def test_batch_size_does_not_change_scores(tiny, name):
    from dataclasses import replace

    cls, cfg = tiny[name]
    batch = _batch(_images(5, 2), _images(1, 3).expand(5, -1, -1, -1))
    metric = cls(cfg, cache=False)
    whole = metric.score(batch)
    metric.cache = MetricCache(False)                       # forget the features, keep the loaded model
    metric.info = replace(metric.info, batch_size=2)
    assert torch.allclose(torch.tensor(whole), torch.tensor(metric.score(batch)), atol=1e-5)


@pytest.mark.parametrize("name", ["clip", "dino", "dreamsim"])
def test_second_evaluation_is_served_from_disk_cache(tiny, name, tmp_path):
    cls, cfg = tiny[name]
    batch = _batch(_images(3, 4), _images(1, 5).expand(3, -1, -1, -1))
    reset_counts()
    first = cls(cfg, cache=MetricCache(tmp_path)).score(batch)
    assert forward_counts()[name] == 4            # 3 results + the reference once (deduplicated)
    reset_counts()
    again = cls(cfg, cache=MetricCache(tmp_path)).score(batch)   # a fresh process would do the same
    assert forward_counts().get(name, 0) == 0
    assert again == pytest.approx(first, abs=1e-6)


def test_clip_quickgelu_follows_the_pretrained_tag():
    # OpenAI weights were trained with QuickGELU; resolving the default never imports open_clip.
    repo, quick, *_ = _tag_info("ViT-B-32", "openai")
    assert quick is True and repo == "timm/vit_base_patch32_clip_224.openai"
    with pytest.raises(ValueError, match="quick_gelu"):
        from metrics.clip import load_open_clip

        load_open_clip(ClipConfig(model="ViT-B-32", pretrained="openai", quick_gelu=False, device="cpu"))


def test_clip_local_dir_layout_loads_the_same_weights(tiny):
    cls, cfg = tiny["clip"]
    folder = cfg.weights.rsplit("/", 1)[0]
    images, refs = _images(2, 6), _images(2, 7)
    by_name = cls(cfg, cache=False).score(_batch(images, refs))
    by_dir = cls(ClipConfig(model=f"local-dir:{folder}", pretrained="", device="cpu"), cache=False).score(
        _batch(images, refs))
    assert by_dir == pytest.approx(by_name, abs=1e-5)
