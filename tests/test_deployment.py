"""Deployment cost: routers (exact triggers are always right), paraphrases, bytes measured from
the files written, and switch / end-to-end latencies measured on a tiny real transformer."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from bench.chat import reset_endpoints
from bench.config import BackboneConfig, LoraTrainConfig, SamplingConfig
from bench.studies.deployment.measure import DeploymentRows
from bench.studies.deployment.routers import ROUTERS, RouterUnavailable
from bench.studies.deployment.routing import exact_requests, measure_routing, paraphrases
from bench.studies.deployment.serving import measure_serving
from bench.studies.deployment.storage import measure_storage, write_random_loras
from metrics.tiny import CannedJudgeServer


@dataclass(frozen=True)
class Effect:
    lora_name: str
    prompt: str
    trigger: str
    description: str
    recaption_prompt_with_trigword: str = ""


EFFECTS = [
    Effect("palette_sepia_00", "Apply the sepia gradient map effect.", "xkiku",
           "The image is recoloured by brightness as a gradient map: dark brown shadows through tan to cream."),
    Effect("warp_mirror_left_00", "Apply the left-half mirror effect.", "qvebi",
           "The left half is mirrored onto the right, making the image symmetric about a vertical axis."),
    Effect("stripes_vertical_wide_dark_00", "Apply the wide dark vertical stripes effect.", "zjifagi",
           "Darkened vertical stripes, widely spaced, are laid over the image."),
    Effect("blur_motion_h_00", "Apply the horizontal motion blur effect.", "mopra",
           "A horizontal motion blur streaks everything sideways."),
    Effect("pattern_checker_dark_00", "Apply the dark checkerboard effect.", "tulve",
           "A fine checkerboard of darkened squares covers the image."),
]


def _rows() -> DeploymentRows:
    return DeploymentRows({"run": "t", "n_effects": len(EFFECTS)}, [])


@pytest.mark.parametrize("name", ["exact", "embedding"])
def test_routers_are_always_right_on_exact_triggers(name):
    router = ROUTERS.get(name)(EFFECTS)
    requests = [(e.lora_name, r) for e in EFFECTS for r in exact_requests(e)]
    assert len(requests) == 2 * len(EFFECTS)
    assert all(router.route(text) == truth for truth, text in requests)


def test_paraphrases_are_deterministic_and_hide_the_trigger():
    a, b = paraphrases(EFFECTS[0], 6, seed=1), paraphrases(EFFECTS[0], 6, seed=1)
    assert a == b and len(set(a)) == 6
    assert paraphrases(EFFECTS[0], 6, seed=2) != a
    assert not any(EFFECTS[0].trigger in p for p in a)
    emb = ROUTERS.get("embedding")(EFFECTS)
    hits = sum(emb.route(p) == e.lora_name for e in EFFECTS for p in paraphrases(e, 4))
    assert hits >= 0.8 * 4 * len(EFFECTS)  # far above chance (20%) on five distinct effects


def test_routing_rows_ours_needs_no_router_within_capacity():
    rows = _rows()
    measure_routing(rows, EFFECTS, ["exact", "embedding", "mllm"], capacity=50, requests_per_effect=2, seed=0)
    recs = rows.records
    ours_lat = [r["value"] for r in recs if r["method"] == "ours" and r["metric"] == "routing_latency_s"
                and r["status"] == "ok"]
    assert ours_lat and set(ours_lat) == {0.0}
    base_lat = [r["value"] for r in recs if r["method"] == "baseline" and r["metric"] == "routing_latency_s"
                and r["router"] == "embedding"]
    assert len(base_lat) == 2 * len(EFFECTS) and all(v > 0 for v in base_lat)
    missing = [r for r in recs if r["router"] == "mllm"]
    assert missing and all(r["status"] == "missing" and "BENCH_ROUTER_URL" in r["note"] for r in missing)


def test_routing_beyond_capacity_counts_collection_hits():
    rows = _rows()
    measure_routing(rows, EFFECTS, ["embedding"], capacity=2, requests_per_effect=2, seed=0)
    ours = [r for r in rows.records if r["method"] == "ours" and r["metric"] == "routing_latency_s"]
    assert all(r["value"] > 0 for r in ours)  # 3 collections: the router runs


class _Stub(BaseHTTPRequestHandler):
    answer = "palette_sepia_00"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["messages"][0]["role"] == "system" and "warp_mirror_left_00" in body["messages"][0]["content"]
        reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps({"effect": self.answer})}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_mllm_router_over_openai_compatible_endpoint(monkeypatch):
    monkeypatch.delenv("BENCH_ROUTER_URL", raising=False)
    with pytest.raises(RouterUnavailable, match="BENCH_ROUTER_URL"):
        ROUTERS.get("mllm")(EFFECTS)
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("BENCH_ROUTER_URL", f"http://127.0.0.1:{server.server_port}/v1")
        router = ROUTERS.get("mllm")(EFFECTS)
        assert router.route("make it look old") == "palette_sepia_00"
        _Stub.answer = "not_an_effect"
        assert router.route("make it look old") is None  # an unknown name is a routing error
    finally:
        server.shutdown()
        _Stub.answer = "palette_sepia_00"


def test_mllm_router_retries_keeps_query_and_credentials_out_of_notes(monkeypatch):
    reset_endpoints()
    monkeypatch.setenv("BENCH_ROUTER_BACKOFF_S", "0.001")
    with CannedJudgeServer(500, json.dumps({"effect": "palette_sepia_00"})) as server:
        url = server.url.replace("http://", "http://router:pw-s3cret@") + "?api-version=1"
        monkeypatch.setenv("BENCH_ROUTER_URL", url)
        assert ROUTERS.get("mllm")(EFFECTS).route("make it look old") == "palette_sepia_00"   # 500, then retried
        assert [r["path"] for r in server.requests] == ["/v1/chat/completions?api-version=1"] * 2
        assert server.requests[0]["auth"].startswith("Basic ")
    rows = _rows()  # the server is gone now
    measure_routing(rows, EFFECTS, ["mllm"], capacity=2, requests_per_effect=1, seed=0)
    notes = {r["note"] for r in rows.records}
    assert {r["status"] for r in rows.records} == {"missing"} and len(notes) == 1
    note = notes.pop()
    assert "unreachable" in note and server.url.removeprefix("http://") in note
    assert "s3cret" not in note and "router:" not in note and "api-version" not in note
    reset_endpoints()


@pytest.fixture(scope="module")
def tiny():
    from methods.backbones.tiny_qwen import TinyQwenBackbone

    return TinyQwenBackbone.create(BackboneConfig(num_layers=1), seed=0)


def test_storage_bytes_are_measured_from_the_files(tiny, tmp_path):
    teachers = write_random_loras(tiny.transformer, LoraTrainConfig(rank=4, alpha=4), 3, tmp_path, prefix="t", seed=0)
    lightning = write_random_loras(tiny.transformer, LoraTrainConfig(rank=8, alpha=8), 1, tmp_path, prefix="l",
                                   seed=1)[0]
    ours = write_random_loras(tiny.transformer, LoraTrainConfig(rank=4, alpha=4), 1, tmp_path, prefix="o", seed=2)
    assert not getattr(tiny.transformer, "peft_config", None)  # the writer adapter is gone again
    rows = _rows()
    measure_storage(rows, teachers=teachers, lightning=lightning, ours=ours, capacity=50)
    got = {(r["method"], r["metric"]): r["value"] for r in rows.records}
    assert got[("baseline", "storage_bytes")] == sum(Path(f).stat().st_size for f in [*teachers, lightning])
    assert got[("ours", "storage_bytes")] == ours[0].stat().st_size
    assert got[("baseline", "storage_files")] == 4 and got[("ours", "storage_files")] == 1
    # a rank-8 file is bigger than a rank-4 file: sizes come from shapes, not from a constant
    assert lightning.stat().st_size > teachers[0].stat().st_size


def test_switch_and_end_to_end_latency_measured_and_base_weights_restored(tiny, tmp_path):
    t = tiny.transformer
    def base_weights():  # LoRA wrappers may come and go; compare the base weights by their plain names
        return {k.replace(".base_layer", ""): v.clone() for k, v in t.state_dict().items() if "lora_" not in k}

    before = base_weights()
    cfg = LoraTrainConfig(rank=4, alpha=4)
    teachers = write_random_loras(t, cfg, 3, tmp_path, prefix="t", seed=0)
    lightning = write_random_loras(t, cfg, 1, tmp_path, prefix="l", seed=1)[0]
    ours = write_random_loras(t, cfg, 2, tmp_path, prefix="o", seed=2)  # two collections: swaps measured
    rows = _rows()
    measure_serving(rows, tiny, effects=EFFECTS[:3], teachers=teachers, lightning=lightning, ours=ours, capacity=2,
                    sampling=SamplingConfig(base_steps=2, fast_steps=2), source=torch.rand(1, 3, 8, 8), repeats=2,
                    seed=0, ranks=(4, 4, 4))
    values: dict[tuple[str, str], list[float]] = {}
    for r in rows.records:
        values.setdefault((r["method"], r["metric"]), []).append(r["value"])
    for key in [("baseline", "switch_load_unload_s"), ("baseline", "switch_hotswap_s"), ("ours", "fuse_once_s"),
                ("ours", "switch_fused_s"), ("base", "e2e_latency_s"), ("baseline", "e2e_latency_s"),
                ("ours", "e2e_latency_s"), ("ours", "peak_memory_bytes"),
                ("ours_hotswap", "e2e_latency_s"), ("ours_hotswap", "peak_memory_bytes")]:
        assert values[key] and all(v > 0 for v in values[key]), key
    assert all(v > 0 for v in values.get(("ours_hotswap", "switch_hotswap_s"), []))
    assert not getattr(t, "peft_config", None)
    after = base_weights()
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)
