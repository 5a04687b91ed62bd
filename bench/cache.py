"""Content-addressed artifact cache (base model, teacher LoRAs, synthetic datasets, ...).

An artifact is described by an :class:`ArtifactSpec`: its kind and the named inputs that
determine it. It lives in ``<root>/<kind>/<key>/`` where ``key`` hashes exactly those inputs,
and the same inputs are written next to it (``config.json``), so what a key means can be read
back and the key and the record cannot drift apart. It is built in a temporary directory under
an exclusive file lock and renamed into place only when complete, so a crash never leaves a
half-written artifact (the temporary directory a killed build leaves is removed by the next
build of that kind) and concurrent jobs (e.g. SLURM array tasks) build it once instead of
racing. Tensor files holding NaN/inf are refused before that rename (``check_finite``): a cached
NaN would feed every run that reuses it.

Small files are written with :func:`atomic_write`, the one tmp-then-rename writer of the tree.

Some artifacts ship with the package (``bench/assets/<kind>/<key>/``: the default preset's
pretrained base and its default effects' teachers). A missing artifact whose key is shipped is
copied in instead of built, so a fresh machine skips minutes of pretraining and training;
``python -m bench.assets`` rebuilds them with the project's own code (``--check``: rebuild and
compare, byte by byte).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench import cost
from bench.config import config_hash, to_dict
from bench.errors import NonFiniteError

DONE = "DONE"
RECORD = "config.json"  # the spec's inputs, next to the artifact
TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth")  # what check_finite opens; images cannot hold NaN
SHIPPED = Path(__file__).resolve().parent / "assets"  # artifacts shipped with the package, as <kind>/<key>/


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write a file so readers see the old file or the whole new one, never a part (concurrent
    SLURM tasks share caches and result folders): ``data`` as bytes or text, or ``data(handle)``
    writing into a binary handle (PIL's ``save``, ``torch.save``). The temporary file sits next
    to the target (``.tmp-*``, same filesystem, so the rename is atomic) and is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide entries from other users of a shared cache
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class ArtifactSpec:
    """What one cached artifact is made from: every input that determines it, by name.

    ``key`` hashes the values of ``inputs`` in their order (``bench.config.config_hash``, so the
    keys of artifacts cached before specs existed are unchanged) and ``record`` is what is
    written next to the artifact: the same inputs, under their names. Re-hashing a stored
    record's inputs gives its directory name back (``key_of_record``). Inputs read from files
    (a dataset on disk, a teacher's weights) enter as content fingerprints
    (``files_fingerprint``), never as paths.
    """

    kind: str                   # cache folder: "base", "teachers", "teacher_outputs", "collectionlora", ...
    inputs: dict[str, Any]      # name -> value (configs as dataclasses or dicts, keys of other artifacts, ...)
    label: str = ""             # how the build log names it ("teacher LoRA sepia"); the log adds kind/key

    @property
    def key(self) -> str:
        return config_hash(*self.inputs.values())

    def record(self) -> dict[str, Any]:
        """The JSON written as ``config.json``: kind, key and the inputs, each as it was hashed."""
        inputs = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in self.inputs.items()}
        return {"kind": self.kind, "key": self.key, "inputs": inputs}

    def describe(self) -> str:
        return f"{self.label} ({self.kind}/{self.key})" if self.label else f"{self.kind}/{self.key}"


def key_of_record(record: dict[str, Any]) -> str:
    """The key a stored record's inputs hash to (its order of inputs is kept in the file)."""
    return config_hash(*record["inputs"].values())


def default_cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "collectionlora-bench"))


class ArtifactCache:
    def __init__(self, root: str | Path | None = None, *, verbose: bool = True,
                 shipped: Path | None = SHIPPED) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.verbose = verbose
        self.shipped = shipped  # where finished artifacts to copy in before building are; None: build all
        # every artifact handed out since the last clear, "kind/key" -> (label, directory): what a
        # run used, so its training cost is the sum of theirs (bench/cost.py; bench/runner.py)
        self.used: dict[str, tuple[str, Path]] = {}
        # every artifact this process built or copied in, "kind/key" -> (how, its exclusive cost):
        # the time of each stage of a run (bench.cost.stage_table)
        self.built: dict[str, tuple[str, cost.Cost]] = {}

    def path(self, spec: ArtifactSpec) -> Path:
        return self.root / spec.kind / spec.key

    def work_dir(self, spec: ArtifactSpec) -> Path:
        """Scratch space of an artifact in progress (checkpoints); survives crashes so a rerun
        resumes, and is removed once the artifact is complete."""
        return self.root / spec.kind / f".work-{spec.key}"

    def exists(self, spec: ArtifactSpec) -> bool:
        return (self.path(spec) / DONE).exists()

    def get_or_build(self, spec: ArtifactSpec, build: Callable[[Path], None]) -> Path:
        """Return the artifact directory, calling ``build(tmp_dir)`` once if it is missing."""
        final = self.path(spec)
        self.used[f"{spec.kind}/{spec.key}"] = (spec.label or spec.kind, final)
        if (final / DONE).exists():
            self._say(f"cached   {spec.describe()}")
            return final
        with self._lock(spec):
            if (final / DONE).exists():  # built by another process while we waited
                self._say(f"cached   {spec.describe()}")
                return final
            shipped = self.shipped_path(spec)
            if shipped is not None:
                # its own cost.json (the build that made it) comes along; the copy adds none. Its
                # top-level record and DONE are written by _install (a nested config.json is data)
                def top_marks(folder: str, names: list[str]) -> list[str]:
                    return [n for n in names if n in (DONE, RECORD)] if Path(folder) == shipped else []

                self._install(spec, lambda d: shutil.copytree(shipped, d, dirs_exist_ok=True, ignore=top_marks),
                              verb="copying shipped")
            else:
                self._install(spec, build)
        return final

    def shipped_path(self, spec: ArtifactSpec) -> Path | None:
        """The finished artifact of this key shipped with the package, if there is one."""
        if self.shipped is None:
            return None
        path = self.shipped / spec.kind / spec.key
        return path if (path / DONE).exists() else None

    def _install(self, spec: ArtifactSpec, build: Callable[[Path], None], *, verb: str = "building") -> None:
        """Build into a temporary directory and rename it into place (the caller holds the lock)."""
        final, key, label = self.path(spec), spec.key, spec.describe()
        self._remove_stale_tmp(spec.kind, building=key)
        self._say(f"{verb} {label}")
        started = time.perf_counter()
        tmp = final.parent / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            # top level in the spec's order (the key hashes the values in that order)
            (tmp / RECORD).write_text(json.dumps(spec.record(), indent=2, default=str))
            with cost.measure(ranks=int(os.environ.get("WORLD_SIZE", "1"))) as measured:
                build(tmp)
            if not (tmp / cost.COST_FILE).exists():  # a snapshot writes the cost of the training behind it
                (tmp / cost.COST_FILE).write_text(measured[0].to_json())
            self.built[f"{spec.kind}/{key}"] = (verb, measured[0])
            check_finite(tmp, label)
            (tmp / DONE).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            shutil.rmtree(self.work_dir(spec), ignore_errors=True)
            done = "built   " if verb == "building" else "copied  "
            self._say(f"{done} {label} in {time.perf_counter() - started:.1f}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, spec: ArtifactSpec, build: Callable[[Path], None]) -> bool:
        """Build an artifact now if it is missing and nobody is building it; never waits.
        Returns whether it was built (e.g. training snapshots published on the way)."""
        if self.exists(spec):
            return False
        lock_path = self.root / spec.kind / f".{spec.key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process is building it
            try:
                if self.exists(spec):
                    return False
                self._install(spec, build)
                return True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_stale_tmp(self, kind: str, *, building: str) -> None:
        """Remove the build directories of ``kind`` that killed builds left (``.tmp-<key>-<pid>``):
        its pid is not alive here and nobody holds that key's build lock -- on a cache shared by
        several nodes the builder may run elsewhere, where its pid means nothing here. The caller
        holds the lock of ``building``, so that key's leftovers need no lock."""
        for tmp in sorted((self.root / kind).glob(".tmp-*-*")):
            key, _, pid = tmp.name[len(".tmp-"):].rpartition("-")
            if not tmp.is_dir() or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
            with contextlib.ExitStack() as stack:
                if key != building:
                    handle = stack.enter_context((self.root / kind / f".{key}.lock").open("a"))
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # being built right now (on another node, or by a reused pid)
                    stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
                shutil.rmtree(tmp, ignore_errors=True)
                self._say(f"removed  {kind}/{tmp.name}, left by a build that did not finish")

    @contextmanager
    def _lock(self, spec: ArtifactSpec) -> Iterator[None]:
        lock_path = self.root / spec.kind / f".{spec.key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _say(self, msg: str) -> None:
        if self.verbose:
            print(f"[cache] {msg}", flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def nonfinite_tensors(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """``"name (3 NaN, 0 inf of 4096)"`` for each floating tensor holding NaN or inf."""
    import torch

    bad = []
    for name, t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        bad.append(f"{name} ({int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} inf of {t.numel()})")
    return bad


def some(items: list[str], k: int = 3) -> str:
    """The first ``k`` items of a list for an error message, with how many were left out."""
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


def check_finite(directory: Path, label: str) -> None:
    """Refuse an artifact whose tensor files hold NaN/inf, before it is marked finished.

    Cached, a NaN artifact is reused by every later run and its damage blamed on whatever runs next
    (all-NaN teacher outputs made DMD report a NaN loss and suggest lowering ``distill.lr``).
    Safetensors and torch pickles of tensors are read back (artifacts are LoRAs and small
    outputs, so this costs milliseconds on the synthetic world); a pickle of other objects is skipped.
    """
    for file in sorted(p for p in directory.rglob("*") if p.suffix in TENSOR_SUFFIXES and p.is_file()):
        bad = nonfinite_tensors(_tensors_in(file))
        if bad:
            raise NonFiniteError(f"{label}: {file.relative_to(directory)} holds NaN/inf in {some(bad)}; "
                                 "it was not cached")


def _tensors_in(file: Path) -> Iterator[tuple[str, Any]]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
        return
    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # not plain tensors: nothing cheap to check
        return
    stack: list[tuple[str, Any]] = [(file.name, obj)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{name}.{k}" if name != file.name else str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            yield name, value


# --------------------------------------------------------------------------------------------
# what is on disk: the one fingerprint policy for inputs read from files (datasets, weights)

_SAMPLE = 1 << 20   # bytes read at the start, middle and end of a big file
_WHOLE = 32 << 20   # files up to this size are hashed whole (images, configs, LoRAs, tokenizers)


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """Content fingerprint of files and folders (a folder: every file under it, hidden ones
    such as ``.cache/`` left out), independent of where they are: names relative to the given
    path and bytes, never absolute paths or mtimes. Small files are hashed whole; big ones
    (multi-GB weights) by size plus 1 MiB at their start (a safetensors header: names, shapes,
    dtypes), middle and end -- a fine-tuned or re-quantised model changes those bytes."""
    h = hashlib.sha256()
    for given in paths:
        given = Path(given)
        files = ([(given.name, given)] if given.is_file() else
                 [(f"{given.name}/{p.relative_to(given).as_posix()}", p) for p in sorted(given.rglob("*"))
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(given).parts)])
        for name, path in files:
            size = path.stat().st_size
            h.update(f"{name} {size};".encode())
            with path.open("rb") as handle:
                if size <= _WHOLE:
                    h.update(handle.read())
                    continue
                for offset in (0, size // 2, size - _SAMPLE):
                    handle.seek(offset)
                    h.update(handle.read(_SAMPLE))
    return h.hexdigest()
