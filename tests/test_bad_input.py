"""Bad input gets a clear error and nothing is lost: NaN teachers, mixed-rank banks, a bad teacher
among many, a truncated results file (issue 14). Tiny models built locally; no world, no
pretraining: the run-level test swaps the Workspace for one that serves teacher files."""

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.cache import ArtifactCache, ArtifactSpec
from bench.cells import DeploymentCell
from bench.config import PRESETS, BackboneConfig, LoraTrainConfig
from bench.data.effectbench import EffectSpec, TrainRow
from bench.errors import NonFiniteError
from bench.store import COLUMNS, ResultStore, cell_id
from methods.adapters import AdapterBank, LoraMismatchError
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.lora import add_lora, load_lora, save_lora


def _backbone():
    return TinyQwenBackbone.create(BackboneConfig(num_layers=2), seed=0)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """Teacher files for the tiny backbone: rank 4 and rank 8, and a rank-4 one with one NaN."""
    root = tmp_path_factory.mktemp("loras")
    bb, files = _backbone(), {}
    for rank in (4, 8):
        add_lora(bb.transformer, f"r{rank}", LoraTrainConfig(rank=rank, alpha=rank))
        with torch.no_grad():
            for pname, p in bb.transformer.named_parameters():
                if f"lora_B.r{rank}." in pname:
                    p.normal_(std=0.05)
        files[rank] = save_lora(bb.transformer, f"r{rank}", root / f"rank{rank}")
    with safe_open(str(files[4]), "pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    poisoned = sorted(k for k in state if "lora_B" in k)[3]
    state[poisoned][0, 0] = float("nan")
    (root / "nan").mkdir()
    save_file(state, str(root / "nan" / "teacher_nan.safetensors"), metadata=meta)
    return SimpleNamespace(rank4=files[4], rank8=files[8], nan=root / "nan" / "teacher_nan.safetensors",
                           poisoned=poisoned, root=root)


def _copies(loras, tmp_path, n, odd=None):
    """``n`` teacher files ``t_0 .. t_{n-1}``; ``odd`` maps an index to a different source file."""
    out = {}
    for i in range(n):
        dst = tmp_path / f"t_{i}.safetensors"
        shutil.copy((odd or {}).get(i, loras.rank4), dst)
        out[f"t_{i}"] = dst
    return out


def test_nan_teacher_names_file_and_tensor_wherever_it_enters(loras):
    bb = _backbone()
    with pytest.raises(NonFiniteError) as err:
        AdapterBank(bb.transformer).check({"t_ok": loras.rank4, "teacher_nan": loras.nan})
    msg = str(err.value)
    assert "teacher_nan.safetensors" in msg and "'teacher_nan'" in msg
    assert loras.poisoned in msg and "1 NaN" in msg
    with pytest.raises(NonFiniteError, match="teacher_nan.safetensors.*non-finite"):
        load_lora(bb.transformer, loras.nan, "direct")  # every other loader path too
    assert "direct" not in getattr(bb.transformer, "peft_config", {})


def test_nan_teacher_outputs_are_never_cached_as_finished(loras, tmp_path):
    """``ours`` / FM all-in-1 sample the teacher's outputs and cache them: a NaN teacher fails
    there naming its file, and no teacher_outputs artifact is marked finished."""
    from methods.teachers import teacher_outputs

    cache = ArtifactCache(tmp_path / "cache", verbose=False)
    cfg = PRESETS.get("smoke")()
    effect = EffectSpec(lora_name="fx", prompt="make it fx", data_type="pet",
                        recaption_prompt_with_trigword="zqx fx", lora_path=loras.nan)
    rows = [TrainRow(lora_name="fx", source_image=Path(f"s{i}.png"), instruction="make it fx") for i in range(2)]
    ws = SimpleNamespace(cfg=cfg, cache=cache, base_key="tiny", image_size=16, load_backbone=_backbone,
                         content_inputs=lambda paths: {}, dataset_root=Path("."),
                         full_bench=SimpleNamespace(train_rows=lambda name: rows),
                         images=lambda paths, origins=None: torch.rand(len(paths), 3, 16, 16),
                         teacher_dir=lambda e, bb=None: Path(e.lora_path))
    with pytest.raises(NonFiniteError, match="teacher_nan.safetensors"):
        teacher_outputs(ws, effect, _backbone())
    assert not list((tmp_path / "cache").glob("teacher_outputs/*/DONE"))


@pytest.mark.parametrize("name, payload", [
    ("outputs.pt", lambda d: torch.save(torch.full((2, 3, 4, 4), float("nan")), d / "outputs.pt")),
    ("student.safetensors",
     lambda d: save_file({"a.lora_B.weight": torch.tensor([[1.0, float("inf")]])}, str(d / "student.safetensors"))),
])
def test_cache_refuses_to_finish_an_artifact_holding_nan(tmp_path, name, payload):
    cache = ArtifactCache(tmp_path, verbose=False)
    spec = ArtifactSpec("collectionlora", {"k": 1}, label="student X")
    with pytest.raises(NonFiniteError, match=rf"student X \(collectionlora/{spec.key}\): {name} holds NaN/inf"):
        cache.get_or_build(spec, payload)
    assert not cache.exists(spec)
    assert not [p for p in (tmp_path / "collectionlora").iterdir() if not p.name.endswith(".lock")]
    ok = cache.get_or_build(ArtifactSpec("collectionlora", {"k": 2}),
                            lambda d: torch.save(torch.ones(2), d / "outputs.pt"))
    assert (ok / "DONE").exists()


def test_mixed_ranks_name_the_odd_one_out_against_the_majority(loras, tmp_path):
    """The odd teacher is read first; the message still names it, not the nine good ones."""
    teachers = _copies(loras, tmp_path, 10, odd={0: loras.rank8})
    with pytest.raises(LoraMismatchError) as err:
        AdapterBank(_backbone().transformer).check(teachers)
    msg = str(err.value)
    assert msg.startswith("teacher LoRA 't_0' (") and "t_0.safetensors) has rank 8" in msg
    assert msg.endswith("the other 9 teachers have rank 4")
    assert not any(f"'t_{i}'" in msg for i in range(1, 10))


def test_bad_teacher_among_many_fails_before_anything_is_evaluated(loras, tmp_path, monkeypatch, capsys):
    """``--method base`` on 8 effects whose 7th teacher is NaN: one ``error:`` line naming it, exit
    2, and no effect evaluated (no rows, no images) -- not a PNG error after six effects."""
    import bench.evaluate
    import bench.workspace
    from bench.run import main

    teachers = _copies(loras, tmp_path, 8, odd={6: loras.nan})
    effects = [EffectSpec(lora_name=n, prompt=f"do {n}", data_type="pet", recaption_prompt_with_trigword=n,
                          lora_path=f) for n, f in teachers.items()]

    class TeacherFiles:  # the Workspace a manifest with lora_path gives, without world or pretraining
        def __init__(self, cfg, cache):
            self.cfg, self.cache, self.bench = cfg, cache, SimpleNamespace(effects=effects)

        def check_inputs(self):  # the files exist; what is in them is the bank's to check
            pass

        def load_backbone(self):
            return _backbone()

        def teacher_dir(self, effect, backbone=None):
            return Path(effect.lora_path)

    evaluated = []
    monkeypatch.setattr(bench.workspace, "Workspace", TeacherFiles)
    monkeypatch.setattr(bench.evaluate, "evaluate", lambda *a, **k: evaluated.append(1))
    out = tmp_path / "runs"
    assert main(["--method", "base", "--preset", "smoke", "--out", str(out), "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: teacher LoRA 't_6'") and "t_6.safetensors" in err[0]
    assert not evaluated and not list(out.rglob("rows.parquet")) and not list(out.rglob("*.png"))


@dataclasses.dataclass(frozen=True)
class _CountingCell(DeploymentCell):
    """A measurement cell that returns fixed rows and counts its runs (nothing to train)."""

    def run(self, out, cache):
        (Path(out) / "runs.txt").open("a").write("x")
        return pd.DataFrame([{c: 0 for c in COLUMNS} | {"metric": "m", "value": float(i), "status": "ok",
                                                        "note": "", "role": "", "run": "r"} for i in range(50)])


def test_truncated_rows_are_reported_and_the_cell_rerun(tmp_path, capsys):
    from bench.runner import run_cell

    cell, cache = _CountingCell(base=PRESETS.get("smoke")(), n_effects=1), ArtifactCache(tmp_path / "c", verbose=False)
    store = ResultStore(tmp_path)
    run_cell(cell, tmp_path, cache)
    rows = store.cell_dir(cell_id(cell)) / "rows.parquet"
    rows.write_bytes(rows.read_bytes()[: rows.stat().st_size // 2])  # a copy cut short / a full disk
    capsys.readouterr()

    from reports.report import load_cells

    assert not ResultStore(tmp_path).is_done(cell_id(cell))
    assert [c.status for c in load_cells(tmp_path)] == ["failed"]  # the report lists it unfinished
    assert len(ResultStore(tmp_path).read_all()) == 0
    capsys.readouterr()
    again = run_cell(cell, tmp_path, cache)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and str(rows) in warnings[0]
    assert (tmp_path / "runs.txt").read_text() == "xx"  # it ran again instead of crashing on the file
    assert len(again) == 50 and len(store.read_cell(cell_id(cell))) == 50
    run_cell(cell, tmp_path, cache)  # and now it is finished: skipped
    assert (tmp_path / "runs.txt").read_text() == "xx" and "finished already" in capsys.readouterr().out
