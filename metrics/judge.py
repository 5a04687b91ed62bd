"""MLLM judge metrics (DESIGN 6): VSA (identity consistency, 1-5, higher is better) and BCR (bad case).

The prompts are written here from the criteria the paper publishes: VSA judges whether the
subject of the source keeps its identity in the result (instruction + source + result; answer
``{"brief_reasoning", "scores"}``); BCR judges whether a result is a *bad case* given the
instruction, the reference template pair, the test pair and the effect's expert criteria
(answer ``{"brief_reasoning", "is_bad_case"}``); the failure modes named are the paper's: effect
missing or partial, concept bleeding / mixed style, subject destroyed, collapse or artifacts.

Answers are parsed strictly: one JSON object with exactly those two keys and the right types
(``scores`` an integer 1-5, ``is_bad_case`` a JSON boolean); a single surrounding markdown code
fence is tolerated, nothing else. An unparsable answer gets a bounded number of corrective
retries (``max_attempts`` in all); if every attempt fails the sample's value is NaN, its status
``parse_failure`` and the raw answers are kept -- it is counted (``stats``, :meth:`score_samples`),
never replaced by a default score. A sample the endpoint gave no answer for (after the retries
and circuit breaker of :mod:`bench.chat`) is ``missing`` with the reason; the other samples of
its batch keep their answers. Parsed answers are cached on disk by (judge, prompt version,
instruction, criteria, image hashes), so re-evaluating makes no judge calls; failures are not
cached, so a rerun after the server is fixed asks again.

Backends (``BENCH_JUDGE`` = ``http`` | ``local`` | ``auto``):
* ``http``: an OpenAI-compatible ``/chat/completions`` endpoint (e.g. ``vllm serve
  Qwen/Qwen2.5-VL-7B-Instruct``) at ``BENCH_JUDGE_URL`` (``user:pass@`` in it is sent as basic
  auth); model name ``BENCH_JUDGE_MODEL``. A key, if the endpoint needs one, is read from the
  environment variable *named* by ``BENCH_JUDGE_API_KEY_ENV`` (default ``BENCH_JUDGE_API_KEY``) at
  request time; neither is ever stored in a config, a cache key, a row or a log line.
  ``BENCH_JUDGE_TIMEOUT_S`` (per request), ``BENCH_JUDGE_HTTP_TRIES``, ``BENCH_JUDGE_BACKOFF_S``
  and ``BENCH_JUDGE_BREAKER_AFTER`` set the retries and the circuit breaker (:mod:`bench.chat`).
* ``local``: a Qwen2.5-VL checkpoint through transformers, from ``BENCH_JUDGE_MODEL_PATH`` or the
  weights dir / HF cache of ``BENCH_JUDGE_MODEL`` (see :mod:`metrics.weights`); greedy decoding.
* ``auto``: ``http`` when a URL is set, else ``local`` (found in the weights dir / HF cache only
  used on a GPU; an explicit ``BENCH_JUDGE_MODEL_PATH`` or ``BENCH_JUDGE=local`` runs anywhere).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from bench.chat import ChatClient, ChatError, EndpointDown
from metrics import EvalBatch, Metric, MetricInfo, MetricUnavailable, SampleScores
from metrics.cache import MetricCache, count_forwards, count_hits, image_hash, text_hash
from metrics.embedding import default_device
from metrics.weights import WeightRequest, fingerprint, force_offline, resolve_dir

log = logging.getLogger(__name__)

PROMPT_VERSION = "judge-v1"  # part of every cache key: editing a prompt invalidates cached answers

Part = str | torch.Tensor   # a text or an image (3, H, W) in [0, 1]


@dataclass
class Turn:
    role: str            # "system" | "user" | "assistant"
    parts: list[Part]


class JudgeUnavailable(MetricUnavailable):
    """No judge is configured or reachable; the message says how to provide one."""


class ParseError(ValueError):
    """The judge's answer is not the JSON object the prompt asked for."""


# --------------------------------------------------------------------------------------------
# prompts

_SYSTEM = ("You are a meticulous evaluator of image edits for a research benchmark. You follow the rubric "
           "exactly and answer with a single JSON object and nothing else.")

_VSA_RUBRIC = """Image 1 is the source image. Image 2 is the result of editing it with this instruction:
"{instruction}"

Judge ONLY identity consistency: is the subject of Image 1 (the pet, the animal or the person) still recognisably the same individual in Image 2? Look at the traits that define who the subject is: head and face shape, body proportions, distinctive markings or features, pose and overall composition. The instruction asks for a visual effect (a colour scheme, texture, rendering style, lighting or medium); such changes are expected and must NOT lower the score, nor may a missing effect raise it.

Scores:
5 - the same individual; every identity trait is preserved.
4 - clearly the same individual; small details deviate.
3 - recognisably similar, but some identity traits are changed or lost.
2 - mostly a different-looking subject; only coarse resemblance remains (species, pose).
1 - identity lost: a different subject, or the subject is destroyed or unrecognisable.

Answer with only this JSON object, no other text:
{{"brief_reasoning": "<one or two sentences>", "scores": <integer from 1 to 5>}}"""

_BCR_RUBRIC = """{template_intro}Image {test_src} is a new source image and Image {test_res} is the result of applying the same effect to it with this instruction:
"{instruction}"

Expert criteria for this effect: {criteria}

Decide whether Image {test_res} is a BAD CASE. It is a bad case if any of these holds:
- the effect is missing, or only partly applied, compared with the reference;
- another style or effect bleeds in, or the style is mixed or drifts away from the reference;
- the subject of Image {test_src} is destroyed, replaced or no longer recognisable;
- the image collapsed or has severe artifacts (noise, heavy blur, flat colour, broken structure) that make it unusable;
- it violates the expert criteria.
Otherwise it is NOT a bad case; small differences from the reference are acceptable.

Answer with only this JSON object, no other text:
{{"brief_reasoning": "<one or two sentences>", "is_bad_case": <true or false>}}"""

_RETRY = ("Your previous answer could not be used: {error}. Reply again with only the JSON object "
          "{schema} -- no other text.")


def vsa_turns(instruction: str, source: torch.Tensor, result: torch.Tensor) -> list[Turn]:
    return [Turn("system", [_SYSTEM]),
            Turn("user", ["Image 1:", source, "Image 2:", result, _VSA_RUBRIC.format(instruction=instruction)])]


def bcr_turns(instruction: str, template_source: torch.Tensor | None, template_result: torch.Tensor,
              source: torch.Tensor, result: torch.Tensor, criteria: str | None) -> list[Turn]:
    criteria = criteria or "none given; the reference defines the effect."
    if template_source is not None:
        intro = ("Images 1 and 2 are the reference template pair of an image effect: Image 1 is a source and "
                 "Image 2 is the intended result of the effect on it.\n")
        parts: list[Part] = ["Image 1:", template_source, "Image 2:", template_result, "Image 3:", source,
                             "Image 4:", result]
        text = _BCR_RUBRIC.format(template_intro=intro, test_src=3, test_res=4, instruction=instruction,
                                  criteria=criteria)
    else:  # dataset without the template's source image: show the reference result alone
        intro = "Image 1 is the reference result of an image effect (its source image is not available).\n"
        parts = ["Image 1:", template_result, "Image 2:", source, "Image 3:", result]
        text = _BCR_RUBRIC.format(template_intro=intro, test_src=2, test_res=3, instruction=instruction,
                                  criteria=criteria)
    return [Turn("system", [_SYSTEM]), Turn("user", parts + [text])]


# --------------------------------------------------------------------------------------------
# strict parsing

_FENCE = re.compile(r"^```(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```$", re.S)


def parse_answer(text: str, field_name: str) -> tuple[str, Any]:
    """(brief_reasoning, value) of a strict JSON answer; raises ParseError with the reason."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        raise ParseError(f"not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(obj, dict):
        raise ParseError(f"a JSON {type(obj).__name__}, not an object")
    expected = {"brief_reasoning", field_name}
    if set(obj) != expected:
        raise ParseError(f"keys {sorted(obj)}, expected exactly {sorted(expected)}")
    reasoning, value = obj["brief_reasoning"], obj[field_name]
    if not isinstance(reasoning, str):
        raise ParseError("brief_reasoning is not a string")
    if field_name == "scores":
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral or not 1 <= value <= 5:
            raise ParseError(f"scores must be an integer from 1 to 5, got {json.dumps(value)}")
        return reasoning, int(value)
    if field_name == "is_bad_case":
        if not isinstance(value, bool):
            raise ParseError(f"is_bad_case must be true or false, got {json.dumps(value)}")
        return reasoning, value
    raise ValueError(f"unknown answer field {field_name!r}")


# --------------------------------------------------------------------------------------------
# config and backends


@dataclass(frozen=True)
class JudgeConfig:
    backend: str = "auto"                        # "http", "local" or "auto" (http when a URL is set)
    url: str | None = field(default=None, repr=False)  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"   # model name sent to the endpoint / HF repo of the local judge
    model_path: str | None = None                # local judge directory (else weights dir / HF cache of `model`)
    api_key_env: str = "BENCH_JUDGE_API_KEY"     # NAME of the variable holding the endpoint key, never the key
    max_attempts: int = 3                        # first answer + corrective retries on unparsable answers
    timeout_s: float = 120.0                     # per HTTP request
    http_tries: int = 3                          # tries per request on transient failures (5xx, 429, timeouts)
    backoff_s: float = 0.5                       # wait before the 2nd try; doubles after each
    breaker_after: int = 8                       # consecutive transport failures that give the endpoint up
    max_new_tokens: int = 256
    image_size: int = 448                        # longest side of every image shown to the judge
    concurrency: int = 4                         # parallel HTTP requests
    device: str = field(default_factory=default_device)

    @classmethod
    def from_env(cls) -> "JudgeConfig":
        env = os.environ.get
        return cls(backend=env("BENCH_JUDGE", cls.backend), url=env("BENCH_JUDGE_URL") or None,
                   model=env("BENCH_JUDGE_MODEL", cls.model), model_path=env("BENCH_JUDGE_MODEL_PATH") or None,
                   api_key_env=env("BENCH_JUDGE_API_KEY_ENV", cls.api_key_env),
                   max_attempts=int(env("BENCH_JUDGE_MAX_ATTEMPTS", cls.max_attempts)),
                   timeout_s=float(env("BENCH_JUDGE_TIMEOUT_S", cls.timeout_s)),
                   http_tries=int(env("BENCH_JUDGE_HTTP_TRIES", cls.http_tries)),
                   backoff_s=float(env("BENCH_JUDGE_BACKOFF_S", cls.backoff_s)),
                   breaker_after=int(env("BENCH_JUDGE_BREAKER_AFTER", cls.breaker_after)))


class JudgeBackend(Protocol):
    identity: str        # what answers depend on (cache key); never secrets

    def chat(self, turns: list[Turn]) -> str: ...


def judge_image(image: torch.Tensor, size: int) -> np.ndarray:
    """uint8 HxWx3 with the longest side resized to ``size`` (bicubic; tiny synthetic images grow)."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = image.detach().float().cpu().unsqueeze(0)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=nh < h)
    return (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class HttpJudge:
    """OpenAI-compatible chat completions (vLLM, SGLang, TGI, hosted APIs) through :mod:`bench.chat`."""

    def __init__(self, cfg: JudgeConfig) -> None:
        if not cfg.url:
            raise JudgeUnavailable("no judge endpoint: set BENCH_JUDGE_URL (e.g. http://127.0.0.1:8000/v1)")
        try:
            self.client = ChatClient(cfg.url, cfg.model, api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s,
                                     tries=cfg.http_tries, backoff_s=cfg.backoff_s, breaker_after=cfg.breaker_after,
                                     what="judge", url_env="BENCH_JUDGE_URL")
        except ValueError as err:
            raise JudgeUnavailable(f"BENCH_JUDGE_URL: {err}") from None
        self.cfg = cfg
        self.identity = f"http|{cfg.model}|{cfg.image_size}px|{cfg.max_new_tokens}"

    def _content(self, parts: list[Part]) -> list[dict] | str:
        out: list[dict] = []
        for part in parts:
            if isinstance(part, str):
                out.append({"type": "text", "text": part})
            else:
                from PIL import Image

                buf = io.BytesIO()
                Image.fromarray(judge_image(part, self.cfg.image_size)).save(buf, format="PNG")
                url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                out.append({"type": "image_url", "image_url": {"url": url}})
        if all(p["type"] == "text" for p in out):
            return "\n".join(p["text"] for p in out)
        return out

    def chat(self, turns: list[Turn]) -> str:
        """The judge's answer; raises :class:`bench.chat.ChatError` when the endpoint gave none."""
        messages = [{"role": t.role, "content": self._content(t.parts)} for t in turns]
        return self.client.complete(messages, max_tokens=self.cfg.max_new_tokens)


class LocalVLMJudge:
    """A Qwen2.5-VL-family checkpoint through transformers; greedy decoding."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.path = resolve_dir(WeightRequest(
            what=f"local judge {cfg.model}", env="BENCH_JUDGE_MODEL_PATH", explicit=cfg.model_path,
            repo=None if cfg.model_path else cfg.model,
            hint="serve a judge with vLLM and set BENCH_JUDGE_URL"), required=("config.json", "tokenizer_config.json"))
        self.identity = f"local|{self.path.name}|{fingerprint(self.path, _weight_files(self.path))}|" \
                        f"{cfg.image_size}px|{cfg.max_new_tokens}"
        self._model = self._processor = None

    def _load(self) -> None:
        force_offline()
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        dtype = torch.bfloat16 if str(self.cfg.device).startswith("cuda") else torch.float32
        self._processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
        self._model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.path, local_files_only=True, dtype=dtype).to(self.cfg.device).eval()

    @torch.no_grad()
    def chat(self, turns: list[Turn]) -> str:
        if self._model is None:
            self._load()
        from PIL import Image

        messages, images = [], []
        for t in turns:
            content = []
            for part in t.parts:
                if isinstance(part, str):
                    content.append({"type": "text", "text": part})
                else:
                    content.append({"type": "image"})
                    images.append(Image.fromarray(judge_image(part, self.cfg.image_size)))
            messages.append({"role": t.role, "content": content})
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self._processor(text=[text], images=images or None, return_tensors="pt").to(self.cfg.device)
        out = self._model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
        return self._processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def _weight_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")


def make_backend(cfg: JudgeConfig) -> JudgeBackend:
    """The configured judge. ``auto`` picks HTTP when a URL is set, else a local judge -- but on a
    machine without a GPU only when its path was given explicitly: a 7B VLM found in the HF cache
    would otherwise turn a quick CPU run into hours of generation."""
    kind = cfg.backend
    if kind == "auto":
        if cfg.url:
            kind = "http"
        else:
            try:
                judge = LocalVLMJudge(cfg)
            except MetricUnavailable as err:
                raise JudgeUnavailable(
                    f"no MLLM judge configured: set BENCH_JUDGE_URL to an OpenAI-compatible endpoint (e.g. "
                    f"`vllm serve {cfg.model}` -> http://127.0.0.1:8000/v1), or provide a local judge ({err})") from None
            if cfg.model_path is None and not str(cfg.device).startswith("cuda"):
                raise JudgeUnavailable(
                    f"local judge {judge.path} found, but there is no GPU: set BENCH_JUDGE=local to run it on "
                    f"{cfg.device} anyway, or BENCH_JUDGE_URL to use a served judge")
            return judge
    if kind == "http":
        return HttpJudge(cfg)
    if kind == "local":
        return LocalVLMJudge(cfg)
    raise ValueError(f"unknown judge backend {kind!r}; valid: auto, http, local")


# --------------------------------------------------------------------------------------------
# metrics


@dataclass
class Verdict:
    """What became of one sample: its parsed answer, or why there is none."""

    status: str = "ok"              # "ok" | "parse_failure" (answers unusable) | "missing" (no answer)
    value: Any = None               # the parsed answer when ok
    note: str = ""                  # why, when not ok
    answers: list[str] = field(default_factory=list)
    endpoint_down: bool = False     # missing because the endpoint was given up (reported once, by bench.chat)


class JudgeMetric(Metric):
    """Asks the judge once per sample; successful answers are cached, failures are asked again next run."""

    field_name: str
    label: str

    def __init__(self, config: JudgeConfig | None = None, *, backend: JudgeBackend | None = None,
                 cache: MetricCache | str | bool | None = True) -> None:
        self.config = config if config is not None else JudgeConfig.from_env()
        self._backend = backend
        self.cache = cache if isinstance(cache, MetricCache) else MetricCache(cache)
        self.stats: Counter[str] = Counter()      # calls, retries, parse_failures, missing, cached, answered
        self.failures: list[dict] = []            # raw answers of every parse failure
        self._lock = threading.Lock()             # HTTP samples are judged in parallel

    def backend(self) -> JudgeBackend:
        if self._backend is None:
            self._backend = make_backend(self.config)
        return self._backend

    def score_samples(self, batch: EvalBatch) -> SampleScores:
        self.check_inputs(batch)
        verdicts = self._judge(batch)
        parse_failures = sum(v.status == "parse_failure" for v in verdicts)
        if parse_failures:
            log.warning("%s: %d of %d judge answers unparsable after %d attempts (recorded as NaN)",
                        self.info.name, parse_failures, len(verdicts), self.config.max_attempts)
        failed = [v for v in verdicts if v.status == "missing" and not v.endpoint_down]
        if failed:
            log.warning("%s: %d of %d samples got no judge answer (recorded as missing): %s",
                        self.info.name, len(failed), len(verdicts), failed[0].note)
        return SampleScores([self._value(v.value) if v.status == "ok" else math.nan for v in verdicts],
                            [v.status for v in verdicts], [v.note for v in verdicts])

    def score(self, batch: EvalBatch) -> list[float]:
        """Values only. A sample without an answer raises: a caller of plain scores cannot see statuses
        (parse failures stay NaN, as they are the judge's verdict on that sample)."""
        scored = self.score_samples(batch)
        missing = [note for status, note in zip(scored.status, scored.notes) if status == "missing"]
        if missing:
            raise JudgeUnavailable(missing[0])
        return scored.values

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return torch.tensor(self.score_samples(batch).values, dtype=torch.float64)

    def _judge(self, batch: EvalBatch) -> list[Verdict]:
        backend = self.backend()
        jobs = [self._sample(batch, i) for i in range(len(batch))]
        if isinstance(backend, HttpJudge) and self.config.concurrency > 1:
            with ThreadPoolExecutor(self.config.concurrency) as pool:
                return list(pool.map(lambda job: self._ask(backend, *job), jobs))
        return [self._ask(backend, *job) for job in jobs]

    def _sample(self, batch: EvalBatch, i: int) -> tuple[list[Turn], str]:
        raise NotImplementedError

    def _value(self, answer: Any) -> float:
        raise NotImplementedError

    def _ask(self, backend: JudgeBackend, turns: list[Turn], key: str) -> Verdict:
        namespace = f"{PROMPT_VERSION}|{self.info.name}|{backend.identity}"
        with self._lock:
            cached = self.cache.get_json(self.label, namespace, key)
            # Only parsed answers are served: caches written before failures stopped being stored
            # may still hold some, and a fixed server must get the chance to answer them.
            if cached is not None and cached.get("error") is None:
                self.stats["cached"] += 1
                count_hits(self.label)
                return Verdict(value=cached["value"])
        schema = '{"brief_reasoning": ..., "%s": ...}' % self.field_name
        answers: list[str] = []
        error: str | None = None
        value = reasoning = None
        conversation = list(turns)
        for attempt in range(self.config.max_attempts):
            try:
                answer = backend.chat(conversation)
            except ChatError as err:
                with self._lock:
                    self.stats["missing"] += 1
                return Verdict("missing", note=str(err), answers=answers, endpoint_down=isinstance(err, EndpointDown))
            with self._lock:
                count_forwards(self.label)
                self.stats["calls"] += 1
                self.stats["retries"] += attempt > 0
            answers.append(answer)
            try:
                reasoning, value = parse_answer(answer, self.field_name)
                error = None
                break
            except ParseError as err:
                error = str(err)
                conversation += [Turn("assistant", [answer]), Turn("user", [_RETRY.format(error=error, schema=schema)])]
        with self._lock:
            if error is not None:  # not cached: the next run asks again
                self.stats["parse_failures"] += 1
                self.failures.append({"metric": self.info.name, "error": error, "answers": answers})
                return Verdict("parse_failure", note=f"judge answer unparsable: {error}", answers=answers)
            self.stats["answered"] += 1
            self.cache.put_json(self.label, namespace, key, {"value": value, "reasoning": reasoning, "error": None,
                                                             "answers": answers, "attempts": len(answers)})
        return Verdict(value=value, answers=answers)


class VSAJudge(JudgeMetric):
    info = MetricInfo("vsa", higher_is_better=True, compares=("results", "sources", "instructions"), batch_size=16,
                      role="VSA", description="MLLM judge: identity consistency of the subject, 1-5")
    field_name = "scores"
    label = "judge-vsa"

    def _sample(self, batch: EvalBatch, i: int) -> tuple[list[Turn], str]:
        turns = vsa_turns(batch.instructions[i], batch.sources[i], batch.results[i])
        return turns, text_hash(batch.instructions[i], image_hash(batch.sources[i]), image_hash(batch.results[i]))

    def _value(self, answer: Any) -> float:
        return float(answer)


class BCRJudge(JudgeMetric):
    info = MetricInfo("bcr", higher_is_better=False, compares=("results", "sources", "references", "instructions"),
                      batch_size=16, role="BCR",
                      description="MLLM judge: 1 if the result is a bad case (template pair + criteria), else 0")
    field_name = "is_bad_case"
    label = "judge-bcr"

    def _sample(self, batch: EvalBatch, i: int) -> tuple[list[Turn], str]:
        template_source = batch.reference_sources[i] if batch.reference_sources is not None else None
        criteria = batch.criteria[i] if batch.criteria is not None else None
        turns = bcr_turns(batch.instructions[i], template_source, batch.references[i], batch.sources[i],
                          batch.results[i], criteria)
        key = text_hash(batch.instructions[i], criteria,
                        None if template_source is None else image_hash(template_source),
                        image_hash(batch.references[i]), image_hash(batch.sources[i]), image_hash(batch.results[i]))
        return turns, key

    def _value(self, answer: Any) -> float:
        return 1.0 if answer else 0.0
