"""Registry errors, config overrides and presets as a user meets them."""

import pytest

from bench.config import PRESETS, RunConfig, apply_overrides, config_hash
from bench.registry import Registry, UnknownNameError


def test_registry_unknown_name_lists_valid_and_suggests():
    reg = Registry("method")
    reg.register("lightning", object())
    reg.register("base", object())
    with pytest.raises(UnknownNameError) as err:
        reg.get("lightnig")
    msg = str(err.value)
    assert "Did you mean 'lightning'" in msg and "base, lightning" in msg


def test_registry_duplicate_and_alias():
    reg = Registry("thing")
    reg.register("a", 1, aliases=("alpha",))
    assert reg.get("alpha") == 1
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)


def test_registry_lazy_target_resolves_once():
    reg = Registry("thing")
    reg.register("join", "os.path:join")
    import os.path

    assert reg.get("join") is os.path.join


def test_overrides_typed_and_nested():
    cfg = apply_overrides(RunConfig(), ["teacher.steps=7", "eval.limit=none", "sampling.base_cfg=2.5",
                                        "eval.metrics=gt_psnr,gt_mae"])
    assert cfg.teacher.steps == 7 and cfg.eval.limit is None and cfg.sampling.base_cfg == 2.5
    assert cfg.eval.metrics == ("gt_psnr", "gt_mae")


@pytest.mark.parametrize("bad, match", [
    ("teacher.stepz=3", "unknown config key"),
    ("teacher.steps=many", "cannot parse"),
    ("teacher=3", "is a section"),
    ("noequals", "key=value"),
])
def test_bad_overrides_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(RunConfig(), [bad])


def test_smoke_is_synth_made_smaller_and_hash_tracks_config():
    smoke, synth = PRESETS.get("smoke")(), PRESETS.get("synth")()
    assert smoke.backbone.attention_head_dim == synth.backbone.attention_head_dim
    assert smoke.pretrain.steps < synth.pretrain.steps
    assert config_hash(smoke) != config_hash(synth)
    assert config_hash(smoke) == config_hash(PRESETS.get("smoke")())


def test_presets_are_in_range_and_bad_values_fail_naming_the_key():
    from bench.config import PRESETS, apply_overrides, check_ranges

    for name in PRESETS.names():
        check_ranges(PRESETS.get(name)())
    cfg = PRESETS.get("smoke")()
    for override, key in (("eval.limit=-1", "eval.limit"), ("distill.steps=0", "distill.steps"),
                          ("distill.lr=-1", "distill.lr"), ("distill.p_switch=1.5", "distill.p_switch"),
                          ("eval.draws=0", "eval.draws")):
        with pytest.raises(ValueError, match=f"'{key}' = .* out of range"):
            check_ranges(apply_overrides(cfg, [override]))
    check_ranges(apply_overrides(cfg, ["eval.limit=none"]))  # none: every test source
