"""Artifacts shipped with the package, as ``<kind>/<key>/`` cache entries (``bench/cache.py``
copies one in instead of building it): for each preset in ``PRESETS``, its pretrained base and the
teacher LoRAs of its default effects (the first ``n_effects`` of the catalogue, what the README's
first command uses), so a fresh machine starts with the evaluation. ``python -m bench.assets``
rebuilds them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.cache import ArtifactSpec
    from bench.workspace import Workspace

PRESETS = ("synth",)         # the default preset; `smoke` pretrains in seconds and is not shipped
KINDS = ("base", "teachers")  # the other 185 teachers are built where they are used (3.3 MB each)


def shipped_specs(ws: Workspace) -> list[ArtifactSpec]:
    """What is shipped for ``ws``'s preset: its base, then the teachers of its default effects."""
    return [ws.base_spec, *(ws.teacher_spec(e) for e in ws.bench.effects)]


def build(ws: Workspace, spec: ArtifactSpec) -> None:
    """Build (or find in ``ws``'s cache) the artifact of ``spec``, one of ``shipped_specs(ws)``."""
    if spec.kind == "base":
        ws.base_dir  # noqa: B018 -- the property builds it
        return
    effect = next(e for e in ws.bench.effects if ws.teacher_spec(e).key == spec.key)
    ws.teacher_dir(effect)
