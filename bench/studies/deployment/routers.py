"""Routers: choose the effect (hence the adapter) a free-text editing request asks for.

The conventional multi-LoRA pipeline must route every request to one of N per-effect LoRAs
before it can load it; CollectionLoRA needs a router only when more than one CollectionLoRA is
deployed (N > capacity). ``routing.py`` times routers and scores them on paraphrased
instructions.

* ``exact``      the request contains an effect's trigger word or its exact instruction.
* ``embedding``  nearest neighbour of a weight-free text embedding (hashed word + character
                 n-gram TF-IDF, cosine) over each effect's instruction, description and name.
* ``mllm``       an (M)LLM behind an OpenAI-compatible ``/chat/completions`` endpoint picks the
                 effect from the list (``BENCH_ROUTER_URL``, ``BENCH_ROUTER_MODEL``,
                 ``BENCH_ROUTER_TIMEOUT_S``, ``BENCH_ROUTER_BACKOFF_S``; a key, if needed, is read at
                 request time from the variable *named* by ``BENCH_ROUTER_API_KEY_ENV``). Requests go through
                 :mod:`bench.chat` (retries, circuit breaker, no secret in any note). No
                 endpoint, or one that fails: :class:`RouterUnavailable`, reported as "missing"
                 with the reason, never a made-up number.

A router returns the chosen effect's ``lora_name`` or ``None`` (no match: a routing error).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Protocol

import numpy as np

from bench.chat import ChatClient, ChatError
from bench.registry import Registry


class Candidate(Protocol):
    """What a router may look at (``bench.data.effectbench.EffectSpec`` satisfies it)."""
    lora_name: str
    prompt: str
    trigger: str | None
    description: str | None


class RouterUnavailable(RuntimeError):
    """The router cannot run here (e.g. no endpoint configured); the message says why."""


class Router(ABC):
    name: ClassVar[str]

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        if not candidates:
            raise ValueError("a router needs at least one candidate effect")
        names = [c.lora_name for c in candidates]
        if len(set(names)) != len(names):
            raise ValueError("router candidates have duplicate names")
        self.candidates = list(candidates)

    @abstractmethod
    def route(self, request: str) -> str | None:
        """The ``lora_name`` the request asks for, or None."""


ROUTERS: Registry[type[Router]] = Registry("router")

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@ROUTERS.register("exact")
class ExactRouter(Router):
    """Trigger word (a whole word of the request) or the exact instruction (substring)."""
    name = "exact"

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        super().__init__(candidates)
        self._triggers = {c.trigger.lower(): c.lora_name for c in candidates if c.trigger}
        self._prompts = [(c.prompt.lower().strip(), c.lora_name) for c in candidates if c.prompt]

    def route(self, request: str) -> str | None:
        for word in _words(request):
            if word in self._triggers:
                return self._triggers[word]
        text = request.lower()
        for prompt, name in self._prompts:
            if prompt and prompt in text:
                return name
        return None


def _features(text: str) -> list[str]:
    """Words, word bigrams and character 3-5-grams of each word (with boundary marks)."""
    words = _words(text)
    feats = [f"w:{w}" for w in words] + [f"b:{a}_{b}" for a, b in zip(words, words[1:])]
    for w in words:
        padded = f"<{w}>"
        for n in (3, 4, 5):
            feats += [f"c:{padded[i:i + n]}" for i in range(max(1, len(padded) - n + 1))]
    return feats


class HashedTfidf:
    """A weight-free text embedding: hashed n-gram counts, sublinear TF, IDF fitted on the
    candidate documents, L2-normalised. Deterministic (crc32), no downloads."""

    def __init__(self, documents: Sequence[str], dim: int = 4096) -> None:
        self.dim = dim
        counts = [self._counts(d) for d in documents]
        df = np.zeros(dim)
        for c in counts:
            df[c > 0] += 1
        self.idf = np.log((1 + len(documents)) / (1 + df)) + 1.0
        self.matrix = np.stack([self._normalise(c) for c in counts])

    def _counts(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim)
        for f in _features(text):
            v[zlib.crc32(f.encode()) % self.dim] += 1
        return v

    def _normalise(self, counts: np.ndarray) -> np.ndarray:
        v = np.where(counts > 0, 1 + np.log(np.maximum(counts, 1)), 0) * self.idf
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def embed(self, text: str) -> np.ndarray:
        return self._normalise(self._counts(text))


def _effect_words(name: str) -> str:
    """``palette_sepia_00`` -> ``palette sepia`` (variant numbers carry no meaning)."""
    return " ".join(p for p in name.split("_") if not p.isdigit())


@ROUTERS.register("embedding")
class EmbeddingRouter(Router):
    """Nearest neighbour (cosine) of the request among the effects' instruction + description + name."""
    name = "embedding"

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        super().__init__(candidates)
        docs = [" ".join(filter(None, [c.prompt, c.description, _effect_words(c.lora_name)]))
                for c in candidates]
        self.embedding = HashedTfidf(docs)
        self._by_bucket = np.ascontiguousarray(self.embedding.matrix.T)  # (dim, N): gather the rows a query hits
        self.exact = ExactRouter(candidates)

    def route(self, request: str) -> str | None:
        hit = self.exact.route(request)  # a trigger word is unambiguous; embeddings blur it
        if hit is not None:
            return hit
        query = self.embedding.embed(request)
        nz = np.flatnonzero(query)  # a request touches ~100 of 4096 buckets: a small product, no BLAS threads
        scores = query[nz] @ self._by_bucket[nz]
        return self.candidates[int(np.argmax(scores))].lora_name


@ROUTERS.register("mllm")
class MLLMRouter(Router):
    """An LLM / MLLM endpoint (OpenAI-compatible chat completions, :mod:`bench.chat`) picks the effect by name."""
    name = "mllm"

    def __init__(self, candidates: Sequence[Candidate], *, url: str | None = None, model: str | None = None) -> None:
        super().__init__(candidates)
        url = url or os.environ.get("BENCH_ROUTER_URL")
        if not url:
            raise RouterUnavailable("no router endpoint: set BENCH_ROUTER_URL to an OpenAI-compatible server "
                                    "(e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct` -> http://127.0.0.1:8000/v1) "
                                    "and BENCH_ROUTER_MODEL to its model name")
        env = os.environ.get
        try:
            self.client = ChatClient(url, model or env("BENCH_ROUTER_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct"),
                                     api_key_env=env("BENCH_ROUTER_API_KEY_ENV", "BENCH_ROUTER_API_KEY"),
                                     timeout_s=float(env("BENCH_ROUTER_TIMEOUT_S", 60.0)),
                                     backoff_s=float(env("BENCH_ROUTER_BACKOFF_S", 0.5)), what="router",
                                     url_env="BENCH_ROUTER_URL")
        except ValueError as err:
            raise RouterUnavailable(f"BENCH_ROUTER_URL: {err}") from None
        self._names = {c.lora_name for c in candidates}
        menu = "\n".join(f"- {c.lora_name}: {c.description or c.prompt}" for c in candidates)
        self._system = ("You route image-editing requests to the one visual effect they ask for. "
                        "Effects (name: what it does):\n" + menu +
                        '\nAnswer with one JSON object {"effect": "<name from the list>"} and nothing else.')

    def route(self, request: str) -> str | None:
        messages = [{"role": "system", "content": self._system}, {"role": "user", "content": request}]
        try:
            content = self.client.complete(messages, max_tokens=64)
        except ChatError as err:  # a failed request is no routing decision: the router is reported missing
            raise RouterUnavailable(str(err)) from None
        return self._parse(content)

    def _parse(self, text: str) -> str | None:
        """The effect named in the answer; an unknown or unparsable answer is a routing error (None)."""
        match = re.search(r"\{.*\}", text, re.S)
        if match:
            try:
                name = json.loads(match.group(0)).get("effect")
            except (json.JSONDecodeError, AttributeError):
                name = None
            if isinstance(name, str) and name.strip() in self._names:
                return name.strip()
        bare = text.strip().strip('"`').strip()
        return bare if bare in self._names else None
