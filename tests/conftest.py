"""Shared fixtures: tiny backbones and small configs built locally, never downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported anywhere

import pytest
import torch

from bench.config import BackboneConfig


@pytest.fixture(autouse=True)
def _torch_threads():
    # tiny models are dominated by thread synchronisation: one thread is faster (measured 2-6x)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_backbone():
    from methods.backbones.tiny_qwen import TinyQwenBackbone

    return TinyQwenBackbone.create(BackboneConfig(num_layers=2), seed=0)
