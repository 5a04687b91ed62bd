"""``python -m bench.assets [--check]``: rebuild the shipped artifacts with the project's own code.

Each preset's base is pretrained from scratch in a temporary cache that ignores the shipped copy
(about 6 minutes quiet on one core for ``synth``), then replaces what ``bench/assets/base/``
holds (older keys are removed: a changed world or preset gives a new key). ``--check`` rebuilds
and compares instead, file by file, and changes nothing: pretraining is deterministic on one
machine, so a difference means the code no longer produces what was shipped.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from bench.assets import PRESETS
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
    args = parser.parse_args(argv)
    failed = False
    for preset in PRESETS:
        with tempfile.TemporaryDirectory(prefix="bench-assets-") as tmp:
            ws = Workspace(CONFIGS.get(preset)(), ArtifactCache(tmp, shipped=None))
            built, spec = ws.base_dir, ws.base_spec
            shipped = SHIPPED / spec.kind / spec.key
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
            for old in (SHIPPED / spec.kind).glob("*"):
                if old.name != spec.key:
                    shutil.rmtree(old)
            shutil.rmtree(shipped, ignore_errors=True)
            shutil.copytree(built, shipped)
            size = sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file())
            print(f"{preset}: shipped {spec.kind}/{spec.key} ({size / 1e6:.1f} MB) in {shipped}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
