"""An LLM chat client for any OpenAI-compatible endpoint: bounded concurrency, our own retries,
a persistent response cache, token accounting and a budget.

Requests go out as plain JSON POSTs to `{base_url}/chat/completions` over one aiohttp session
(keep-alive connections; an HTTP(S)_PROXY / NO_PROXY of the environment applies, read once). The openai SDK is not used on
this path: building and validating its typed request and response models costs about 2 ms of
CPU a request, so a 30 ms endpoint with 16 requests in flight waited on the client's own CPU;
a plain POST and `json.loads` cost about 0.3 ms.

Every retry is decided and counted here: 429, 408, 5xx, time-outs and dropped connections are
retried with exponential backoff and jitter, waiting at least what the server's Retry-After (or
retry-after-ms) asks for. Other statuses fail the request at once; 401, 403 and 404 stop the
run, as no later request can work. A 2xx reply that is not a JSON object fails the request as
`unreadable_response`.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import AsyncContextManager, Callable, Optional, Protocol, Union

import aiohttp

from .cache import CachedResponse, ResponseCache, cache_key
from .redact import redact, register_secret

Slot = Callable[[], AsyncContextManager]


class SlotSource(Protocol):
    """A limit shared with other runs (flows/limits.py's LLMSlot): `leases(most)` opens, in the
    client's event loop, a `Slot` factory with an `aclose()` that gives its slots back."""

    def leases(self, most: int) -> Slot: ...
RETRY_STATUSES = {408, 409, 429}
FATAL_STATUSES = {401, 403, 404}


class RequestFailed(Exception):
    """A request given up on; `reason` is a short rejection reason (`http_status:400`, `timeout`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} {detail}".strip())
        self.reason = reason


class EndpointError(Exception):
    """The endpoint refuses every request (bad key, unknown model or URL): the run stops."""


class StatusError(Exception):
    """A reply with a status outside 2xx: the status, the body the server sent, its headers."""

    def __init__(self, status: int, body: str, headers):
        super().__init__(f"Error code: {status} - {body}")
        self.status_code, self.body, self.headers = status, body, headers


class BudgetExhausted(Exception):
    """The run's request or token budget is spent; the request was not sent."""


@dataclass
class ClientSettings:
    base_url: str
    model: str
    api_key: str = field(repr=False)
    concurrency: int = 8
    request_timeout: float = 60.0
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    temperature: float = 0.7
    max_tokens: int = 1024
    json_mode: str = "auto"  # auto | on | off
    max_requests: Optional[int] = None
    max_total_tokens: Optional[int] = None


@dataclass
class Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool


@dataclass
class ClientStats:
    requests_sent: int = 0  # every HTTP attempt
    responses: int = 0  # completions received (billable)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    responses_without_usage: int = 0
    retries: Counter = field(default_factory=Counter)  # reason -> count
    failures: Counter = field(default_factory=Counter)
    retry_after_waits: int = 0
    longest_wait: float = 0.0
    json_mode_fallback: bool = False
    budget_refusals: int = 0

    def as_dict(self) -> dict:
        return {
            "requests_sent": self.requests_sent,
            "responses": self.responses,
            "cache_hits": self.cache_hits,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                      "total_tokens": self.prompt_tokens + self.completion_tokens},
            "usage_served_from_cache": {"prompt_tokens": self.cached_prompt_tokens, "completion_tokens": self.cached_completion_tokens},
            "responses_without_usage": self.responses_without_usage,
            "retries": dict(self.retries),
            "failures": dict(self.failures),
            "retry_after_waits": self.retry_after_waits,
            "longest_wait_s": round(self.longest_wait, 3),
            "json_mode_fallback": self.json_mode_fallback,
            "budget_refusals": self.budget_refusals,
        }


class Budget:
    """Requests and tokens a run may spend. Requests are reserved before they are sent (a
    passage reserves all its steps at once, so none is started that the budget cannot finish),
    which makes the request bound exact; the token bound can be passed by requests in flight."""

    def __init__(self, max_requests: Optional[int] = None, max_tokens: Optional[int] = None):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.reserved = self.spent_requests = self.spent_tokens = 0
        self.exhausted = False

    def reserve(self, requests: int = 1) -> bool:
        over_requests = self.max_requests is not None and self.spent_requests + self.reserved + requests > self.max_requests
        over_tokens = self.max_tokens is not None and self.spent_tokens >= self.max_tokens
        if over_requests or over_tokens:
            self.exhausted = True
            return False
        self.reserved += requests
        return True

    def settle(self, tokens: int) -> None:
        self.reserved -= 1
        self.spent_requests += 1
        self.spent_tokens += tokens

    def release(self, requests: int = 1) -> None:
        self.reserved -= requests


class Reservation:
    """Requests a passage holds in the budget; `None` in place of one means cache only."""

    def __init__(self, budget: Budget, requests: int):
        self.budget, self.left = budget, requests

    def take(self) -> None:
        if self.left <= 0:
            raise BudgetExhausted()
        self.left -= 1

    def close(self) -> None:
        if self.left:
            self.budget.release(self.left)
            self.left = 0


def retry_after_seconds(headers) -> Optional[float]:
    """Seconds a response asks to wait: `retry-after-ms`, `retry-after` in seconds or as a date."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class ChatClient:
    """Chat completions with a cache in front and retries behind. `slot`, when given, is entered
    around every HTTP attempt: a limit shared with other runs (a global concurrency limit). A
    `SlotSource` is opened here for at most `concurrency` slots and closed by `close()`; create
    the client in the event loop that sends its requests."""

    def __init__(self, settings: ClientSettings, cache: Optional[ResponseCache] = None,
                 slot: Optional[Union[Slot, SlotSource]] = None, rng: Optional[random.Random] = None):
        self.settings = settings
        self.cache = cache
        self.slot = slot.leases(settings.concurrency) if hasattr(slot, "leases") else slot
        self.stats = ClientStats()
        self.budget = Budget(settings.max_requests, settings.max_total_tokens)
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._json = settings.json_mode != "off"
        self._refused: Optional[str] = None  # set by a 401/403/404: no later request is sent
        self._rng = rng or random.Random()
        register_secret(settings.api_key)  # gateways echo a refused key in their error bodies
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {settings.api_key}", "Content-Type": "application/json",
                         "Accept": "application/json", "User-Agent": "tcm-corpus"}
        # `request_timeout` bounds connecting and each wait for the reply's bytes, not the whole
        # exchange, as the openai SDK's time-out did.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=settings.request_timeout,
                                              sock_read=settings.request_timeout)
        self._proxy = env_proxy(self._url)
        self._session: Optional[aiohttp.ClientSession] = None  # opened by the first request, in its loop

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Not aiohttp's trust_env: it looks up the proxy and ~/.netrc in a worker thread on
            # every request (two thread hops each), and a netrc entry would clash with our key.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.settings.concurrency),
                                                  timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        try:
            closing = getattr(self.slot, "aclose", None)
            if closing is not None:
                await closing()
        finally:
            if self._session is not None:
                await self._session.close()

    def key(self, messages: list[dict], *, step: str, prompt_version: str, passage_hash: str) -> str:
        s = self.settings
        return cache_key(model=s.model, prompt_version=prompt_version, step=step, passage=passage_hash,
                         temperature=s.temperature, max_tokens=s.max_tokens, messages=messages)

    def reserve(self, requests: int) -> Optional[Reservation]:
        """Hold `requests` of the budget for one passage; None once the budget is spent, after
        which only cached responses are served."""
        if self.budget.reserve(requests):
            return Reservation(self.budget, requests)
        return None

    async def complete(self, messages: list[dict], *, step: str, prompt_version: str, passage_hash: str,
                       reservation: Optional[Reservation] = None) -> Completion:
        """A completion from the cache, else from the endpoint within `reservation` (or, with
        none given, a request reserved on the spot)."""
        key = self.key(messages, step=step, prompt_version=prompt_version, passage_hash=passage_hash)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                self.stats.cached_prompt_tokens += hit.prompt_tokens
                self.stats.cached_completion_tokens += hit.completion_tokens
                return Completion(hit.content, hit.prompt_tokens, hit.completion_tokens, cached=True)
        if reservation is not None:
            try:
                reservation.take()
            except BudgetExhausted:
                self.stats.budget_refusals += 1
                raise
        elif not self.budget.reserve():
            self.stats.budget_refusals += 1
            raise BudgetExhausted()
        try:
            completion = await self._send(messages)
        except BaseException:
            self.budget.release()
            raise
        self.budget.settle(completion.prompt_tokens + completion.completion_tokens)
        if self.cache is not None:
            # Stored the moment it arrives: a kill after this line costs nothing on the next run.
            self.cache.put(key, CachedResponse(completion.content, completion.prompt_tokens, completion.completion_tokens),
                           model=self.settings.model, prompt_version=prompt_version, step=step, passage_hash=passage_hash)
        return completion

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** attempt)
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def _send(self, messages: list[dict]) -> Completion:
        s = self.settings
        attempt = 0
        while True:
            use_json = self._json
            try:
                return await self._attempt(messages, use_json)
            except StatusError as exc:
                status = exc.status_code
                if status in FATAL_STATUSES:
                    self._refused = self._refused or refusal(status, s, exc)
                    raise EndpointError(self._refused) from None
                if status in (400, 422) and use_json and s.json_mode == "auto":
                    # The server does not take response_format: ask for JSON in the prompt only.
                    self._json = False
                    self.stats.json_mode_fallback = True
                    continue
                if status not in RETRY_STATUSES and status < 500:
                    self.stats.failures[f"http_status:{status}"] += 1
                    raise RequestFailed(f"http_status:{status}", _short(exc)) from None
                reason, asked = f"http_status:{status}", retry_after_seconds(exc.headers)
            except asyncio.TimeoutError:  # aiohttp's connect and read time-outs
                reason, asked = "timeout", None
            except aiohttp.ClientError:  # refused, reset or dropped connections, cut-off replies
                reason, asked = "connection", None
            if attempt >= s.max_retries:
                self.stats.failures[f"{reason}:retries={attempt}"] += 1
                raise RequestFailed(reason, f"after {attempt} retries")
            delay = self._backoff(attempt)
            if asked is not None:
                self.stats.retry_after_waits += 1
                delay = max(delay, min(asked, s.max_retry_after))
            self.stats.retries[reason] += 1
            self.stats.longest_wait = max(self.stats.longest_wait, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _attempt(self, messages: list[dict], use_json: bool) -> Completion:
        s = self.settings
        request = {"model": s.model, "messages": messages, "temperature": s.temperature, "max_tokens": s.max_tokens}
        if use_json:
            request["response_format"] = {"type": "json_object"}
        body = json.dumps(request, ensure_ascii=False).encode("utf-8")
        async with self._semaphore, AsyncExitStack() as stack:
            if self.slot is not None:
                await stack.enter_async_context(self.slot())
            if self._refused:  # refused while this request waited for a slot: the answer would be the same
                raise EndpointError(self._refused)
            self.stats.requests_sent += 1
            async with self._http().post(self._url, data=body, headers=self._headers, proxy=self._proxy) as response:
                status, raw = response.status, await response.read()
                if not 200 <= status < 300:
                    raise StatusError(status, raw.decode("utf-8", "replace"), response.headers)
        self.stats.responses += 1
        try:
            reply = json.loads(raw)
            if not isinstance(reply, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            self.stats.failures["unreadable_response"] += 1
            raise RequestFailed("unreadable_response", _short(ValueError(raw[:200].decode("utf-8", "replace")))) from None
        usage = reply.get("usage")
        if not isinstance(usage, dict):
            usage = None
            self.stats.responses_without_usage += 1
        prompt_tokens = (usage.get("prompt_tokens") or 0) if usage else 0
        completion_tokens = (usage.get("completion_tokens") or 0) if usage else 0
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        return Completion(_content(reply), prompt_tokens, completion_tokens, cached=False)


def _content(reply: dict) -> str:
    """The first choice's message text of a chat completion ("" when it has none)."""
    choices = reply.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def env_proxy(url: str) -> Optional[str]:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, with NO_PROXY
    honoured), or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def refusal(status: int, settings: ClientSettings, exc: Exception) -> str:
    """One line for a 401, 403 or 404: which of key, permission or model/URL was refused."""
    said = _short(exc)
    if status == 401:
        what = "refused the API key (401 Unauthorized): check the key in convert.api_key_env"
    elif status == 403:
        what = f"refused this API key access to model {settings.model!r} (403 Forbidden)"
    else:
        what = f"does not know model {settings.model!r} or the URL {settings.base_url} (404 Not Found): check convert.model and convert.base_url"
    return f"the endpoint {what}; it said: {said}"


def _short(exc: Exception) -> str:
    """An error's text for a message or a rejection reason: one line, at most 200 characters,
    with the API key and any Authorization value masked."""
    text = redact(str(exc)).replace("\n", " ")
    return text[:200]
