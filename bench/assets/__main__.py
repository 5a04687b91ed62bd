"""``python -m bench.assets [--check] [--cache DIR]``: rebuild the shipped artifacts with the project's own code.

For each preset, its base is pretrained from scratch (about 6 minutes quiet on one core for
``synth``) and the teachers of its default effects are trained on it (about 90 CPU s each) in a
temporary cache that ignores the shipped copies; they then replace what ``bench/assets/<kind>/``
holds (keys no longer shipped are removed: a changed world or preset gives new keys). ``--cache
DIR`` takes the artifacts a cache already holds under the same keys instead of rebuilding them
(after ``docs/reference/make.sh``, say; a key names everything its artifact is built from).
``--check`` rebuilds and compares instead, file by file, and changes nothing: training is
deterministic on one machine, so a difference means the code no longer produces what was shipped.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from bench.assets import KINDS, PRESETS, build, shipped_specs
from bench.cache import DONE, SHIPPED, ArtifactCache
from bench.config import PRESETS as CONFIGS
from bench.workspace import Workspace


def _differences(a: Path, b: Path) -> list[str]:
    """Relative paths of files present in one tree only or with different bytes."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*")
                                                                        if p.is_file()}
    skip = {"cost.json"}  # wall and CPU seconds differ from run to run; the passes are in it too
    return sorted(str(n) for n in names if n.name not in skip and not (
        (a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, shallow=False)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.assets", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="rebuild and compare with the shipped files")
    parser.add_argument("--cache", type=Path, help="take finished artifacts from this cache instead of rebuilding")
    args = parser.parse_args(argv)
    if args.check and args.cache:
        parser.error("--check rebuilds from scratch; it takes no --cache")
    failed, keep = False, {kind: set() for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench-assets-") as tmp:
        for preset in PRESETS:
            ws = Workspace(CONFIGS.get(preset)(), ArtifactCache(args.cache or tmp, shipped=None))
            for spec in shipped_specs(ws):
                build(ws, spec)
                built, shipped = ws.cache.path(spec), SHIPPED / spec.kind / spec.key
                keep[spec.kind].add(spec.key)
                if args.check:
                    if not (shipped / DONE).exists():
                        print(f"error: {preset}: no shipped {spec.kind}/{spec.key}; run python -m bench.assets")
                        failed = True
                        continue
                    diff = _differences(built, shipped)
                    print(f"{preset}: {spec.kind}/{spec.key} " + ("matches the rebuild" if not diff else
                                                                   f"differs from the rebuild in {', '.join(diff)}"))
                    failed |= bool(diff)
                    continue
                shutil.rmtree(shipped, ignore_errors=True)
                shutil.copytree(built, shipped)
                size = sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file())
                print(f"{preset}: shipped {spec.kind}/{spec.key} ({size / 1e6:.1f} MB) in {shipped}")
    if not args.check:
        for kind, keys in keep.items():
            for old in (SHIPPED / kind).glob("*") if (SHIPPED / kind).is_dir() else ():
                if old.name not in keys:
                    shutil.rmtree(old)
                    print(f"removed {kind}/{old.name}: no preset ships it any more")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
