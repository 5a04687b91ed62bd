"""MLLM judge (VSA, BCR) over a local OpenAI-compatible server and a tiny Qwen2.5-VL; EditReward."""

from __future__ import annotations

import base64
import logging
import math
import socket
import time

import pytest
import torch

from bench.chat import reset_endpoints
from metrics import EvalBatch, MetricUnavailable
from metrics.cache import MetricCache, cache_hits, forward_counts, forward_report, reset_counts
from metrics.judge import BCRJudge, JudgeConfig, ParseError, VSAJudge, parse_answer
from metrics.tiny import CannedJudgeServer

VSA_OK = '{"brief_reasoning": "same cat, new colours", "scores": 4}'
BCR_OK = '```json\n{"brief_reasoning": "effect missing", "is_bad_case": true}\n```'


@pytest.fixture(autouse=True)
def fresh_endpoints():
    """The circuit breaker lives for the process; each test starts with every endpoint up."""
    reset_endpoints()
    yield
    reset_endpoints()


@pytest.fixture
def server_factory():
    servers = []

    def make(*replies):
        servers.append(CannedJudgeServer(*replies))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _batch(n: int = 3, seed: int = 0) -> EvalBatch:
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.rand(n, 3, 16, 16, generator=g)  # noqa: E731
    return EvalBatch(img(), img(), ["turn it into a watercolour painting"] * n, None, img(), img(),
                     ["soft washes, paper texture"] * n)


def _http(url: str, **kw) -> JudgeConfig:
    kw = {"backoff_s": 0.001, **kw}  # retries without real sleeps
    return JudgeConfig(backend="http", url=url, model="judge-under-test", image_size=32, **kw)


def test_vsa_scores_from_strict_json(server_factory, tmp_path):
    server = server_factory(VSA_OK)
    metric = VSAJudge(_http(server.url), cache=MetricCache(tmp_path))
    scored = metric.score_samples(_batch())
    assert scored.values == [4.0, 4.0, 4.0]
    assert scored.status == ["ok"] * 3 and metric.stats["parse_failures"] == 0
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["temperature"] == 0
    content = request["body"]["messages"][1]["content"]
    assert [p["type"] for p in content].count("image_url") == 2          # source + result
    assert "identity" in content[-1]["text"] and "turn it into a watercolour" in content[-1]["text"]


def test_bcr_shows_template_pair_test_pair_and_criteria(server_factory, tmp_path):
    server = server_factory(BCR_OK)
    metric = BCRJudge(_http(server.url), cache=MetricCache(tmp_path))
    assert metric.score(_batch(2)) == [1.0, 1.0]
    content = server.requests[0]["body"]["messages"][1]["content"]
    assert [p["type"] for p in content].count("image_url") == 4
    assert "soft washes, paper texture" in content[-1]["text"] and "BAD CASE" in content[-1]["text"]


def test_non_json_answer_is_counted_as_parse_failure_never_defaulted(server_factory, tmp_path):
    server = server_factory("I think it looks great, 5/5!")
    metric = VSAJudge(_http(server.url, max_attempts=2), cache=MetricCache(tmp_path))
    scored = metric.score_samples(_batch(2))
    assert all(math.isnan(s) for s in scored.values)
    assert scored.status == ["parse_failure"] * 2
    assert metric.stats["parse_failures"] == 2 and metric.stats["calls"] == 4 and metric.stats["retries"] == 2
    assert "not valid JSON" in scored.notes[0]
    assert metric.failures[0]["answers"] == ["I think it looks great, 5/5!"] * 2
    # The retry told the judge what was wrong, in the same conversation.
    retry = next(r["body"]["messages"] for r in server.requests if len(r["body"]["messages"]) > 2)
    assert retry[-2]["role"] == "assistant" and "could not be used" in retry[-1]["content"]


def test_bounded_retry_recovers_a_later_valid_answer(server_factory, tmp_path):
    server = server_factory("Score: 3", VSA_OK)
    metric = VSAJudge(_http(server.url, concurrency=1), cache=MetricCache(tmp_path))
    assert metric.score(_batch(1)) == [4.0]
    assert metric.stats["retries"] == 1 and metric.stats["parse_failures"] == 0


def test_answers_are_cached_so_reevaluation_asks_nobody(server_factory, tmp_path):
    server = server_factory(VSA_OK)
    batch = _batch(3)
    VSAJudge(_http(server.url), cache=MetricCache(tmp_path)).score(batch)
    asked = len(server.requests)
    reset_counts()
    again = VSAJudge(_http(server.url), cache=MetricCache(tmp_path))
    assert again.score(batch) == [4.0] * 3
    assert len(server.requests) == asked and forward_counts().get("judge-vsa", 0) == 0


def test_api_key_is_sent_but_never_stored(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    server = server_factory(VSA_OK)
    cfg = _http(server.url, api_key_env="MY_JUDGE_KEY")
    VSAJudge(cfg, cache=MetricCache(tmp_path)).score(_batch(1))
    assert server.requests[0]["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(cfg)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert "sk-secret" not in path.read_text(errors="replace")


def test_unreachable_endpoint_reports_missing_not_a_number(tmp_path):
    metric = VSAJudge(_http("http://127.0.0.1:9/v1", timeout_s=2), cache=MetricCache(tmp_path))
    with pytest.raises(MetricUnavailable, match="unreachable"):
        metric.score(_batch(1))


def _poisoned_batch(n: int = 3, poisoned: int = 1) -> EvalBatch:
    batch = _batch(n)
    batch.instructions = [f"make sample {i} {'POISON' if i == poisoned else 'blue'}" for i in range(n)]
    return batch


def _text(request: dict) -> str:
    return request["body"]["messages"][1]["content"][-1]["text"]


def test_a_500_on_one_sample_leaves_the_others_of_its_batch_valid(server_factory, tmp_path):
    server = server_factory(lambda request: 500 if "POISON" in _text(request) else VSA_OK)
    metric = VSAJudge(_http(server.url, http_tries=2), cache=MetricCache(tmp_path))
    scored = metric.score_samples(_poisoned_batch())
    assert scored.status == ["ok", "missing", "ok"]
    assert scored.values[0] == scored.values[2] == 4.0 and math.isnan(scored.values[1])
    assert "HTTP 500" in scored.notes[1] and "after 2 tries" in scored.notes[1]
    assert sum("POISON" in _text(r) for r in server.requests) == 2          # retried, then given up


def test_transient_500_is_retried_and_succeeds(server_factory, tmp_path):
    server = server_factory(503, 500, VSA_OK)
    metric = VSAJudge(_http(server.url, concurrency=1), cache=MetricCache(tmp_path))
    scored = metric.score_samples(_batch(1))
    assert scored.values == [4.0] and scored.status == ["ok"] and len(server.requests) == 3


def test_timed_out_request_is_retried(tmp_path):
    calls = []

    def slow_once(request):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)  # past the client's timeout
        return VSA_OK

    with CannedJudgeServer(slow_once) as server:
        metric = VSAJudge(_http(server.url, timeout_s=0.2, concurrency=1), cache=MetricCache(tmp_path))
        assert metric.score_samples(_batch(1)).values == [4.0]
    assert len(calls) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_endpoint_is_given_up_quickly_with_one_message(tmp_path, caplog):
    url = f"http://127.0.0.1:{_closed_port()}/v1"               # connection refused
    cfg = _http(url, http_tries=3, breaker_after=4, timeout_s=5)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        vsa, bcr = VSAJudge(cfg, cache=MetricCache(tmp_path)), BCRJudge(cfg, cache=MetricCache(tmp_path))
        results = [m.score_samples(_batch(6)) for m in (vsa, bcr, vsa)]  # e.g. two metrics, next effect
    assert time.perf_counter() - start < 2.0
    for scored in results:
        assert scored.status == ["missing"] * 6 and all(math.isnan(v) for v in scored.values)
    notes = {n for scored in results for n in scored.notes}
    down = [n for n in notes if "is down" in n]
    assert down and "not calling it again" in down[0] and "BENCH_JUDGE_URL" in down[0]
    assert [r.message for r in caplog.records if "is down" in r.message] == [down[0]]   # said once
    assert results[1].notes == [down[0]] * 6 and results[2].notes == [down[0]] * 6


def test_a_down_endpoint_is_not_called_again(server_factory, tmp_path):
    server = server_factory(503)
    cfg = _http(server.url, http_tries=3, breaker_after=4, concurrency=1)
    for metric in (VSAJudge(cfg, cache=MetricCache(tmp_path)), BCRJudge(cfg, cache=MetricCache(tmp_path))):
        assert metric.score_samples(_batch(5)).status == ["missing"] * 5
    assert len(server.requests) == 4


def test_unparsable_answer_is_asked_again_after_the_server_is_fixed(server_factory, tmp_path):
    broken, fixed = server_factory("Score: 3"), server_factory(VSA_OK)
    batch = _batch(3)
    reset_counts()
    first = VSAJudge(_http(broken.url, max_attempts=1), cache=MetricCache(tmp_path)).score_samples(batch)
    assert first.status == ["parse_failure"] * 3
    assert cache_hits().get("judge-vsa", 0) == 0
    reset_counts()
    second = VSAJudge(_http(fixed.url), cache=MetricCache(tmp_path)).score_samples(batch)
    assert second.values == [4.0] * 3 and len(fixed.requests) == 3             # not replayed from the cache
    assert forward_counts()["judge-vsa"] == 3 and cache_hits().get("judge-vsa", 0) == 0
    reset_counts()
    third = VSAJudge(_http(fixed.url), cache=MetricCache(tmp_path))
    assert third.score_samples(batch).values == [4.0] * 3 and len(fixed.requests) == 3
    assert third.stats["cached"] == 3 and "judge-vsa 0 forwards / 3 cached" in forward_report()


@pytest.mark.parametrize("suffix", ["/v1?api-version=2024-06-01", "/v1/?api-version=2024-06-01"])
def test_url_with_query_string_gets_the_path_before_the_query(server_factory, tmp_path, suffix):
    server = server_factory(VSA_OK)
    url = server.url.removesuffix("/v1") + suffix
    assert VSAJudge(_http(url), cache=MetricCache(tmp_path)).score(_batch(1)) == [4.0]
    assert server.requests[0]["path"] == "/v1/chat/completions?api-version=2024-06-01"


def test_credentials_in_the_url_are_basic_auth_and_never_shown(server_factory, tmp_path):
    server = server_factory(lambda request: 500 if "POISON" in _text(request) else VSA_OK)
    url = server.url.replace("http://", "http://judge-user:s3cr%40t-pw@")
    metric = VSAJudge(_http(url, http_tries=1), cache=MetricCache(tmp_path))
    scored = metric.score_samples(_poisoned_batch(2))
    assert scored.status == ["ok", "missing"]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Basic " + base64.b64encode(b"judge-user:s3cr@t-pw").decode()
    for text in (*scored.notes, repr(metric.config)):
        assert "s3cr" not in text and "judge-user" not in text
    down = f"http://judge-user:s3cr%40t-pw@127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(MetricUnavailable) as err:
        VSAJudge(_http(down, http_tries=1, breaker_after=1), cache=MetricCache(tmp_path)).score(_batch(1))
    assert "unreachable" in str(err.value) and "s3cr" not in str(err.value) and "judge-user" not in str(err.value)


@pytest.mark.parametrize("text, field, value", [
    (VSA_OK, "scores", 4),
    ('{"brief_reasoning": "", "scores": 5.0}', "scores", 5),
    ('```\n{"brief_reasoning": "x", "is_bad_case": false}\n```', "is_bad_case", False),
])
def test_parser_accepts(text, field, value):
    assert parse_answer(text, field)[1] == value


@pytest.mark.parametrize("text, field", [
    ('{"brief_reasoning": "x", "scores": 6}', "scores"),
    ('{"brief_reasoning": "x", "scores": "4"}', "scores"),
    ('{"brief_reasoning": "x", "scores": 3.5}', "scores"),
    ('{"brief_reasoning": "x", "scores": true}', "scores"),
    ('{"scores": 4}', "scores"),
    ('{"brief_reasoning": "x", "scores": 4, "extra": 1}', "scores"),
    ('Sure! {"brief_reasoning": "x", "scores": 4}', "scores"),
    ('{"brief_reasoning": "x", "is_bad_case": "yes"}', "is_bad_case"),
    ('{"brief_reasoning": "x", "is_bad_case": 1}', "is_bad_case"),
    ("[1, 2]", "scores"),
])
def test_parser_is_strict(text, field):
    with pytest.raises(ParseError):
        parse_answer(text, field)


# ------------------------------------------------------------------ tiny Qwen2.5-VL (local backend)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from metrics import tiny

    root = tmp_path_factory.mktemp("tiny-qwen")
    base = tiny.tiny_qwen_vl(root / "qwen")
    return base, tiny.tiny_editreward(root / "editreward", base)


def test_local_qwen_judge_runs_and_counts_garbage_as_parse_failure(tiny_qwen, tmp_path):
    base, _ = tiny_qwen
    cfg = JudgeConfig(backend="local", model_path=str(base), max_new_tokens=8, max_attempts=2, image_size=56,
                      device="cpu")
    metric = BCRJudge(cfg, cache=MetricCache(tmp_path))
    scores = metric.score(_batch(1))
    assert math.isnan(scores[0]) and metric.stats["parse_failures"] == 1 and metric.stats["calls"] == 2


def test_editreward_tiny_checkpoint(tiny_qwen, tmp_path):
    from dataclasses import replace

    from metrics.editreward import EditRewardScore

    _, cfg = tiny_qwen
    batch = _batch(3)
    reset_counts()
    first = EditRewardScore(cfg, cache=MetricCache(tmp_path))
    scores = first.score(batch)
    assert all(math.isfinite(s) for s in scores) and forward_counts()["editreward"] == 3
    small = EditRewardScore(cfg, cache=False)
    small.info = replace(small.info, batch_size=1)
    assert small.score(batch) == pytest.approx(scores, abs=1e-5)           # batch size does not matter
    same = EditRewardScore(cfg, cache=False).score(EvalBatch(batch.results[:1].repeat(2, 1, 1, 1),
                                                             batch.sources[:1].repeat(2, 1, 1, 1),
                                                             batch.instructions[:2]))
    assert same[0] == pytest.approx(same[1], abs=1e-6) and same[0] == pytest.approx(scores[0], abs=1e-5)
    reset_counts()
    assert EditRewardScore(cfg, cache=MetricCache(tmp_path)).score(batch) == pytest.approx(scores)
    assert forward_counts().get("editreward", 0) == 0
