"""A cell directory links to the LoRAs it evaluated and their loss CSVs (``artifacts.json``)."""

import json

from bench.store import ARTIFACTS, ResultStore


def test_artifacts_json_lists_lora_files_and_loss_csvs(tmp_path):
    student = tmp_path / "cache" / "ours" / "k1"
    student.mkdir(parents=True)
    for name in ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "adapter_config.json",
                 "losses.csv", "config.json", "DONE"):
        (student / name).write_text("")
    external = tmp_path / "manifest" / "warm.safetensors"   # a teacher given by its lora_path file
    external.parent.mkdir()
    external.write_text("")

    path = ResultStore(tmp_path / "runs").write_artifacts("c1", {"student": student, "teacher/warm": external})
    assert path == tmp_path / "runs" / "cells" / "c1" / ARTIFACTS
    links = json.loads(path.read_text())
    assert list(links) == ["student", "teacher/warm"]
    assert [p.rsplit("/", 1)[1] for p in links["student"]["lora"]] == [
        "adapter_config.json", "adapter_model.safetensors", "pytorch_lora_weights.safetensors"]
    assert links["student"]["loss_csv"] == [str(student / "losses.csv")]
    assert links["teacher/warm"] == {"dir": str(external.parent), "lora": [str(external)], "loss_csv": []}
    assert ResultStore(tmp_path / "runs").read_artifacts("c1") == links
    assert ResultStore(tmp_path / "runs").read_artifacts("never-run") == {}
