"""Shared fixtures: tiny backbones and small configs built locally, never downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported anywhere

import pytest
import torch

from bench.config import BackboneConfig

FAST_SUITE = "not e2e and not slurm"  # pyproject's addopts: what plain `pytest` selects


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Plain ``pytest`` (the whole fast suite: no paths, no ``-m``, no ``-n``) runs on
    pytest-xdist workers, one per core up to 4, each test file on one worker (its module
    fixtures built once): quiet on 2 cores 83 s instead of 140-154 s. Named files or tests run in
    one process (workers would only add their start-up), ``-m ""`` too (CI: the SLURM tests
    share one dev cluster); an explicit ``-n`` is as asked, ``-n 0`` the fast suite serially."""
    xdist = config.pluginmanager.hasplugin("xdist")
    if (not xdist or hasattr(config, "workerinput") or config.option.markexpr != FAST_SUITE
            or config.args_source != pytest.Config.ArgsSource.TESTPATHS):
        return
    if config.option.numprocesses is None and not config.getoption("usepdb", False):
        from bench.threads import usable_cores

        workers = min(usable_cores(), 4)
        if workers > 1:
            config.option.numprocesses, config.option.dist = workers, "loadfile"


@pytest.fixture(autouse=True)
def _torch_threads():
    # tiny models are dominated by thread synchronisation: one thread is faster (measured 2-6x)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_backbone():
    from methods.backbones.tiny_qwen import TinyQwenBackbone

    return TinyQwenBackbone.create(BackboneConfig(num_layers=2), seed=0)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running SLURM cluster: the existing one, or the dev cluster started when CI=true or
    BENCH_START_SLURM=1 (then failing to start is a failure, not a skip); otherwise skip."""
    import time

    from slurm.devcluster import HINT, cluster_available, ensure_cluster, is_ci, start_allowed_by_env

    ok, reason = cluster_available()
    if ok:
        return reason
    if not start_allowed_by_env():
        pytest.skip(f"no SLURM cluster ({reason}): {HINT}")
    t0 = time.monotonic()
    try:
        ensure_cluster(start=True)
        error = ""
    except RuntimeError as exc:
        error = str(exc)
    if error:
        where = "CI=true" if is_ci() else "BENCH_START_SLURM=1"
        pytest.fail(f"{where} but the dev SLURM cluster could not be started: {error}", pytrace=False)
    print(f"\n[slurm] dev cluster started in {time.monotonic() - t0:.1f}s")
    return cluster_available()[1]
