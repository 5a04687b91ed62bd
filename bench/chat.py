"""One client for OpenAI-compatible ``/chat/completions`` endpoints (the MLLM judge, the MLLM router).

There is one because two copies drifted apart: one appended the path after a query string,
one put the raw URL (credentials included) into row notes.

* URL: the path is joined before the query (``.../v1?api-version=1`` is requested as
  ``.../v1/chat/completions?api-version=1``); ``user:pass@`` in the netloc becomes HTTP basic
  auth and is removed from the request URL. A key, if the endpoint needs one, is read at request
  time from the environment variable *named* by ``api_key_env`` and sent as a Bearer token.
  Messages show the endpoint as ``scheme://host[:port]/path`` -- never credentials or the query --
  and the secrets are redacted from any text the server sends back.
* Transient failures (HTTP 5xx, 408, 429, timeouts, refused or reset connections) are retried
  with exponential backoff (``tries``, ``backoff_s``). A 401/403/404/405 or an answer that is not
  in the OpenAI format means the endpoint is misconfigured: it is given up at once. Any other
  4xx fails that one request (its sample), not the endpoint.
* Circuit breaker: after ``breaker_after`` consecutive transport failures the endpoint is *down*
  for the rest of the process, for every client of it (VSA and BCR, every effect): later
  requests fail at once with the same reason, and one warning is logged -- not a timeout per
  sample, effect and metric. :func:`reset_endpoints` forgets this (tests, long-lived sessions).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

log = logging.getLogger(__name__)

_TRANSIENT_HTTP = frozenset({408, 429})   # plus every 5xx
_MISCONFIGURED_HTTP = frozenset({401, 403, 404, 405})
_SECRET_QUERY_KEY = re.compile(r"key|token|secret|sig|pass|auth", re.I)
_MAX_RETRY_AFTER_S = 30.0                 # a server's Retry-After is honoured up to this


class ChatError(RuntimeError):
    """One request failed for good; the message says why and holds no secret."""


class EndpointDown(ChatError):
    """The endpoint was given up for this run; every request fails at once with this reason."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go, what messages show, and the credentials the URL carried."""

    url: str                                              # requested: path joined, credentials removed, query kept
    shown: str                                            # scheme://host[:port]/path, safe to print
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    query_secrets: tuple[str, ...] = field(default=(), repr=False)  # values of key=/token=... query parameters


def parse_endpoint(url: str) -> Endpoint:
    """Split a user-given base URL into the request URL, a printable form and basic-auth credentials."""
    parts = urllib.parse.urlsplit(url.strip())
    hostport = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("http", "https") or not hostport:
        raise ValueError(f"endpoint URL must look like http://host:port/v1 (got scheme {parts.scheme!r})")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    unquote = urllib.parse.unquote
    secrets = tuple(v for k, v in urllib.parse.parse_qsl(parts.query) if _SECRET_QUERY_KEY.search(k) and v)
    return Endpoint(url=urllib.parse.urlunsplit((parts.scheme, hostport, path, parts.query, "")),
                    shown=urllib.parse.urlunsplit((parts.scheme, hostport, path, "", "")),
                    username=None if parts.username is None else unquote(parts.username),
                    password=None if parts.password is None else unquote(parts.password),
                    query_secrets=secrets)


class _Breaker:
    """Consecutive transport failures of one endpoint; opens once, for the rest of the process."""

    def __init__(self, after: int) -> None:
        self.after = max(1, after)
        self.failures = 0
        self.down: str | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.down is not None:
            raise EndpointDown(self.down)

    def success(self) -> None:
        with self._lock:
            self.failures = 0

    def failure(self, describe: Callable[[int], str]) -> None:
        """Count one transport failure; ``describe(n)`` is the message if the breaker opens now."""
        with self._lock:
            self.failures += 1
            if self.failures >= self.after:
                self._open(describe(self.failures))

    def trip(self, message: str) -> None:
        with self._lock:
            self._open(message)

    def _open(self, message: str) -> None:
        if self.down is None:  # the one message of this endpoint
            self.down = message
            log.warning(message)


_BREAKERS: dict[str, _Breaker] = {}
_BREAKERS_LOCK = threading.Lock()


def _breaker(url: str, after: int) -> _Breaker:
    with _BREAKERS_LOCK:
        return _BREAKERS.setdefault(url, _Breaker(after))


def reset_endpoints() -> None:
    """Forget which endpoints were given up (a fresh run in the same process)."""
    with _BREAKERS_LOCK:
        _BREAKERS.clear()


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ChatClient:
    """POSTs chat completions to one endpoint, with retries and the shared circuit breaker."""

    def __init__(self, url: str, model: str, *, api_key_env: str, timeout_s: float = 120.0, tries: int = 3,
                 backoff_s: float = 0.5, breaker_after: int = 8, what: str = "chat", url_env: str = "") -> None:
        self.endpoint = parse_endpoint(url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s, self.tries, self.backoff_s = timeout_s, max(1, tries), backoff_s
        self.name = f"{what} endpoint {self.endpoint.shown}"
        self._fix = f"start the server or fix {url_env}" if url_env else "start the server or fix its URL"
        self._url_env = url_env or "the endpoint URL"
        self._breaker = _breaker(self.endpoint.url, breaker_after)
        host = urllib.parse.urlsplit(self.endpoint.url).hostname or ""
        # Loopback servers are reached directly even when a proxy is configured.
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0) -> str:
        """The assistant's text; raises :class:`ChatError` (this request) or :class:`EndpointDown`."""
        body = json.dumps({"model": self.model, "temperature": temperature, "max_tokens": max_tokens,
                           "messages": messages}).encode()
        delay = self.backoff_s
        for attempt in range(1, self.tries + 1):
            self._breaker.check()
            try:
                payload = self._post(body)
            except _Transient as err:
                self._breaker.failure(lambda n, err=err: f"{self.name} is down: {err} ({n} failed requests in a row); "
                                                f"not calling it again in this run -- {self._fix}")
                self._breaker.check()
                if attempt == self.tries:
                    tries = "1 try" if self.tries == 1 else f"{self.tries} tries"
                    raise ChatError(f"{self.name}: {err} (after {tries})") from None
                time.sleep(max(delay, min(err.retry_after, _MAX_RETRY_AFTER_S)))
                delay *= 2
                continue
            self._breaker.success()
            return self._content(payload)
        raise AssertionError("unreachable")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        ep = self.endpoint
        if ep.username is not None and key:
            self._give_up(f"{self.name}: credentials in {self._url_env} and a key in ${self.api_key_env} are both "
                          f"set; use one")
        if ep.username is not None:
            token = base64.b64encode(f"{ep.username}:{ep.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self.endpoint.url, data=body, headers=self._headers(), method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = self._redact(err.read()[:300].decode(errors="replace").strip())
            what = f"HTTP {err.code}" + (f": {detail}" if detail else "")
            if err.code >= 500 or err.code in _TRANSIENT_HTTP:
                raise _Transient(f"answered {what}", _seconds(err.headers.get("Retry-After"))) from None
            if err.code in _MISCONFIGURED_HTTP:
                self._give_up(f"{self.name} answered {what}; not calling it again in this run -- check "
                              f"{self._url_env} (usually ending in /v1) and the key")
            self._breaker.success()  # the server is up; this request alone was refused
            raise ChatError(f"{self.name} answered {what}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            # refused / reset / DNS / timeout (socket.timeout is an OSError)
            reason = getattr(err, "reason", None) or str(err) or err.__class__.__name__
            raise _Transient(f"unreachable ({self._redact(str(reason))})") from None
        try:
            return json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._give_up(f"{self.name} did not answer in the OpenAI chat format; not calling it again in this "
                          f"run -- check {self._url_env}")

    def _content(self, payload: dict) -> str:
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            self._give_up(f"{self.name} answered without choices[0].message.content; not calling it again in "
                          f"this run -- check {self._url_env}")
        return content if isinstance(content, str) else json.dumps(content)

    def _give_up(self, message: str) -> NoReturn:
        """The endpoint is misconfigured: every request would fail the same way."""
        self._breaker.trip(message)
        raise EndpointDown(self._breaker.down or message)

    def _redact(self, text: str) -> str:
        ep = self.endpoint
        for secret in (ep.password, os.environ.get(self.api_key_env), *ep.query_secrets):
            if secret and len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: fall back to the backoff
        return 0.0
