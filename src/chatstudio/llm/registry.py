"""The configured providers behind one door: model ids, aliases, retries, fallbacks, cool-downs, discovery.

A model id is `provider/model` (the model part may itself contain slashes, as Hugging Face ids do) or an
alias from MODEL_ALIASES. `stream()` is what the chat service calls; it is the only place that combines
the retry layer, the fallback chain and the per-provider circuit breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatstudio.config import ConfigError, Settings
from chatstudio.llm.anthropic import AnthropicProvider
from chatstudio.llm.base import (
    ChatProvider,
    ChatRequest,
    LLMError,
    ModelInfo,
    ProviderAuthError,
    ProviderNotConfigured,
    ProviderUnavailable,
    StreamEvent,
    UnknownModel,
)
from chatstudio.llm.cohere import CohereProvider
from chatstudio.llm.huggingface import HuggingFaceProvider
from chatstudio.llm.local import MODEL_ID as LOCAL_MODEL_ID
from chatstudio.llm.local import LocalProvider
from chatstudio.llm.openai import DEFAULT_BASE_URL as OPENAI_BASE_URL
from chatstudio.llm.openai import OpenAIProvider, is_openai_chat_model
from chatstudio.llm.retry import RetryPolicy

log = logging.getLogger("chatstudio.llm")

BUILTIN_PROVIDERS = ("openai", "anthropic", "cohere", "huggingface", "local")
DEFAULT_CONTEXT_WINDOW = 8192
FAILURE_THRESHOLD = 3
# How long a failed discovery is trusted, so a provider that comes back is noticed before the full TTL.
FAILED_DISCOVERY_TTL = 30.0
_ENDPOINT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# Model-name prefixes, most specific first, matched case-insensitively on the last path segment.
KNOWN_CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 1_047_576),
    ("gpt-5", 400_000),
    ("gpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("claude", 200_000),
    ("command-a", 256_000),
    ("command-r", 128_000),
    ("llama-3", 128_000),
    ("llama3", 128_000),
    ("qwen2.5", 32_768),
    ("mistral", 32_768),
)


class CallObserver(Protocol):
    """One provider call as metrics see it (observability.metrics.ProviderCall)."""

    def event(self, event: StreamEvent) -> None: ...

    def end(self, error: BaseException | None = None) -> None: ...


StreamObserver = Callable[[str, str], CallObserver]


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    open_until: float = 0.0


class ProviderRegistry:
    def __init__(
        self,
        providers: Iterable[ChatProvider],
        *,
        static_models: Mapping[str, Sequence[ModelInfo]] | None = None,
        closed_catalogs: Mapping[str, Iterable[str]] | None = None,
        aliases: Mapping[str, str] | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        retry: RetryPolicy | None = None,
        cooldown_seconds: float = 30.0,
        failure_threshold: int = FAILURE_THRESHOLD,
        discovery_timeout: float = 2.0,
        discovery_ttl: float = 300.0,
        local_context: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._providers: dict[str, ChatProvider] = {p.name: p for p in providers}
        self._static = {name: list(models) for name, models in (static_models or {}).items()}
        # Providers whose model list is fixed here (the local model): anything else is an unknown model.
        self._catalogs = {name: frozenset(models) for name, models in (closed_catalogs or {}).items()}
        self.aliases = dict(aliases or {})
        self._fallbacks = {key: list(chain) for key, chain in (fallbacks or {}).items()}
        self.retry = retry or RetryPolicy()
        self._cooldown = cooldown_seconds
        self._threshold = failure_threshold
        self._discovery_timeout = discovery_timeout
        self._discovery_ttl = discovery_ttl
        self._local_context = local_context
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {name: _Breaker() for name in self._providers}
        self._listing: list[tuple[str, ModelInfo]] | None = None
        self._listing_until = 0.0
        self._listing_lock = asyncio.Lock()
        self._discovered: dict[str, ModelInfo] = {}
        # Set by the application to time and count each provider call (metrics); must pass events unchanged.
        self.observe: StreamObserver | None = None

    @property
    def providers(self) -> Mapping[str, ChatProvider]:
        return self._providers

    def canonical(self, model_id: str) -> str:
        """`provider/model` for an alias or an id; no validation."""
        model_id = model_id.strip()
        return self.aliases.get(model_id, model_id)

    def resolve(self, model_id: str) -> tuple[ChatProvider, str]:
        canonical = self.canonical(model_id)
        name, slash, model = canonical.partition("/")
        if not slash or not name or not model:
            raise UnknownModel(message=f"Unknown model {model_id!r}: use provider/model or a configured alias.")
        provider = self._providers.get(name)
        if provider is None:
            if name in BUILTIN_PROVIDERS:
                raise ProviderNotConfigured(
                    message=f"The {name} provider is not configured on this server.", provider=name
                )
            raise UnknownModel(message=f"Unknown model {model_id!r}: no provider is named {name!r}.")
        catalog = self._catalogs.get(name)
        if catalog is not None and model not in catalog:
            raise UnknownModel(message=f"Unknown model {model_id!r}.", provider=name)
        return provider, model

    def relays(self, model_id: str) -> bool:
        """Whether every provider that may answer `model_id` (fallbacks included) honours
        ChatRequest.relay, so that every event of its stream is a WireChunk, Usage or Finish."""
        primary = self.canonical(model_id)
        chain = self._fallbacks.get(primary) or self._fallbacks.get(model_id.strip()) or ()
        for candidate in (primary, *chain):
            try:
                provider, _ = self.resolve(candidate)
            except LLMError:
                return False
            if not getattr(provider, "relays", False):
                return False
        return True

    def context_window(self, model_id: str) -> int:
        name, _, model = self.canonical(model_id).partition("/")
        if name == "local" and self._local_context:
            return self._local_context
        discovered = self._discovered.get(f"{name}/{model}")
        if discovered is not None and discovered.context_window:
            return discovered.context_window
        short = model.rsplit("/", 1)[-1].lower()
        for prefix, size in KNOWN_CONTEXT_WINDOWS:
            if short.startswith(prefix):
                return size
        return DEFAULT_CONTEXT_WINDOW

    def cooling_down(self, provider: str) -> float:
        """Seconds left in the provider's cool-down, 0 when it may be called."""
        breaker = self._breakers.get(provider)
        if breaker is None or breaker.failures < self._threshold:
            return 0.0
        return max(0.0, breaker.open_until - self._clock())

    def _record(self, provider: str, error: LLMError | None) -> None:
        breaker = self._breakers.setdefault(provider, _Breaker())
        if error is None:
            breaker.failures = 0
            return
        if not (error.retryable or isinstance(error, ProviderAuthError)):
            return  # the request's fault (too long, bad parameter), not the provider's
        breaker.failures += 1
        if breaker.failures >= self._threshold and self._cooldown > 0:
            breaker.open_until = self._clock() + self._cooldown
            log.warning("%s: %d failures in a row; cooling down for %gs", provider, breaker.failures, self._cooldown)

    async def stream(self, model_id: str, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Events for `model_id` (`request.model` is replaced by the resolved name), retried and then
        falling back along MODEL_FALLBACKS only while no event has been produced. Resolution errors
        (UnknownModel, ProviderNotConfigured) surface on the first iteration; call `resolve` to check earlier."""
        primary = self.canonical(model_id)
        chain = self._fallbacks.get(primary) or self._fallbacks.get(model_id.strip()) or ()
        candidates = [primary, *chain]
        deadline_at = self.retry.clock() + self.retry.deadline
        last_error: LLMError | None = None
        for index, candidate in enumerate(candidates):
            try:
                provider, model = self.resolve(candidate)
            except LLMError:
                if index == 0:
                    raise
                log.warning("fallback %s for %s is not usable; skipped", candidate, primary)
                continue
            wait = self.cooling_down(provider.name)
            if wait > 0:
                last_error = ProviderUnavailable(
                    message=f"{provider.name} is cooling down after repeated failures.",
                    provider=provider.name,
                    retry_after=wait,
                )
                continue
            # A caller that already names the provider's model is not copied (a frozen dataclass's
            # replace() costs several microseconds on every relayed completion).
            attempt = request if request.model == model else dataclasses.replace(request, model=model)
            events = self.retry.stream(
                functools.partial(provider.stream, attempt), provider=provider.name, deadline_at=deadline_at
            )
            call = self.observe(provider.name, model) if self.observe is not None else None
            try:
                first = await anext(events)
            except StopAsyncIteration:
                if call is not None:
                    call.end()
                self._record(provider.name, None)
                return
            except BaseException as error:
                await events.aclose()
                if call is not None:
                    call.end(error)
                if not isinstance(error, LLMError):
                    raise
                self._record(provider.name, error)
                if not (error.retryable or isinstance(error, ProviderAuthError)):
                    raise
                if index + 1 < len(candidates):
                    log.warning("%s failed before its first token (%s); falling back", candidate, error.code)
                last_error = error
                continue
            self._record(provider.name, None)
            ended: BaseException | None = None
            try:
                if call is not None:
                    call.event(first)
                yield first
                async for event in events:
                    if call is not None:
                        call.event(event)
                    yield event
            except BaseException as error:
                ended = error
                if isinstance(error, LLMError):
                    self._record(provider.name, error)
                raise
            finally:
                await events.aclose()
                if call is not None:
                    call.end(ended)
            return
        # Index 0 either raised or set last_error, so this fallback value is never used in practice.
        raise last_error or ProviderUnavailable(provider=primary.partition("/")[0])

    async def list_models(self) -> list[tuple[str, ModelInfo]]:
        """Every configured provider's models plus the aliases, discovered concurrently and cached."""
        if self._listing is not None and self._clock() < self._listing_until:
            return list(self._listing)
        async with self._listing_lock:  # one discovery at a time; latecomers reuse its result
            if self._listing is not None and self._clock() < self._listing_until:
                return list(self._listing)
            results = await asyncio.gather(*(self._discover(p) for p in self._providers.values()))
            listing: list[tuple[str, ModelInfo]] = []
            all_reached = True
            for models, reached in results:
                all_reached = all_reached and reached
                listing.extend((f"{info.provider}/{info.id}", info) for info in models)
            self._discovered = dict(listing)
            for alias, target in sorted(self.aliases.items()):
                found = self._discovered.get(target)
                name, _, model = target.partition("/")
                if name in self._providers:
                    listing.append((alias, found or ModelInfo(id=model, provider=name)))
            ttl = self._discovery_ttl if all_reached else min(self._discovery_ttl, FAILED_DISCOVERY_TTL)
            self._listing = listing
            self._listing_until = self._clock() + ttl
            return list(listing)

    async def _discover(self, provider: ChatProvider) -> tuple[list[ModelInfo], bool]:
        static = self._static.get(provider.name, [])
        try:
            async with asyncio.timeout(self._discovery_timeout):
                found = await provider.list_models()
            reached = True
        except (LLMError, TimeoutError) as error:
            log.info("%s: model discovery failed (%s); using configured models", provider.name, type(error).__name__)
            found, reached = [], False
        except Exception:
            log.exception("%s: model discovery failed", provider.name)
            found, reached = [], False
        known = {info.id for info in found}
        merged = found + [info for info in static if info.id not in known]
        merged.sort(key=lambda info: info.id)
        return merged, reached

    async def aclose(self) -> None:
        results = await asyncio.gather(*(p.aclose() for p in self._providers.values()), return_exceptions=True)
        for provider, result in zip(self._providers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("%s: error while closing: %s", provider, type(result).__name__)


def _endpoints(settings: Settings) -> list[OpenAIProvider]:
    built: list[OpenAIProvider] = []
    for index, entry in enumerate(settings.openai_compatible_endpoints):
        name = entry.get("name")
        base_url = entry.get("base_url")
        where = f"OPENAI_COMPATIBLE_ENDPOINTS[{index}]"
        if not isinstance(name, str) or not _ENDPOINT_NAME.match(name):
            raise ConfigError(f"{where}: name must be lowercase letters, digits, '-' or '_' (got {name!r})")
        if name in BUILTIN_PROVIDERS or any(p.name == name for p in built):
            raise ConfigError(f"{where}: the name {name!r} is already taken")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: base_url must be an http(s) URL")
        models = entry.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"{where}: models must be a list of model names")
        api_key = entry.get("api_key")
        built.append(
            OpenAIProvider(
                name=name,
                base_url=base_url,
                api_key=str(api_key) if api_key else None,
                models=models,
                connect_timeout=settings.provider_connect_timeout,
                read_timeout=settings.provider_read_timeout,
            )
        )
    return built


def build_registry(settings: Settings, *, retry: RetryPolicy | None = None) -> ProviderRegistry:
    """A registry holding exactly the providers the settings configure."""
    connect, read = settings.provider_connect_timeout, settings.provider_read_timeout
    providers: list[OpenAIProvider | AnthropicProvider | CohereProvider | LocalProvider] = []
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    openai_default = settings.openai_base_url.rstrip("/") == OPENAI_BASE_URL
    if openai_key or not openai_default:
        providers.append(
            OpenAIProvider(
                base_url=settings.openai_base_url,
                api_key=openai_key,
                organization=settings.openai_org_id,
                models=[settings.openai_default_model],
                max_tokens_field="max_completion_tokens" if openai_default else "max_tokens",
                model_filter=is_openai_chat_model if openai_default else None,
                connect_timeout=connect,
                read_timeout=read,
            )
        )
    if settings.anthropic_api_key:
        key = settings.anthropic_api_key.get_secret_value()
        providers.append(
            AnthropicProvider(
                api_key=key, base_url=settings.anthropic_base_url, connect_timeout=connect, read_timeout=read
            )
        )
    if settings.cohere_api_key:
        key = settings.cohere_api_key.get_secret_value()
        providers.append(
            CohereProvider(api_key=key, base_url=settings.cohere_base_url, connect_timeout=connect, read_timeout=read)
        )
    if settings.huggingface_api_key:
        key = settings.huggingface_api_key.get_secret_value()
        providers.append(
            HuggingFaceProvider(
                api_key=key, base_url=settings.huggingface_base_url, connect_timeout=connect, read_timeout=read
            )
        )
    providers.extend(_endpoints(settings))
    local_context = None
    if settings.local_model_enabled:
        local_context = settings.local_model_context
        providers.append(
            LocalProvider(
                model_path=settings.local_model_path,
                threads=settings.local_model_threads,
                context=settings.local_model_context,
            )
        )
    for alias, target in settings.model_aliases.items():
        if "/" not in target:
            raise ConfigError(f"MODEL_ALIASES: {alias!r} must map to provider/model (got {target!r})")
    static = {
        p.name: [ModelInfo(id=m, provider=p.name, context_window=_static_window(p, m)) for m in p.static_models]
        for p in providers
    }
    return ProviderRegistry(
        providers,
        static_models=static,
        closed_catalogs={"local": [LOCAL_MODEL_ID]} if settings.local_model_enabled else None,
        aliases=settings.model_aliases,
        fallbacks=settings.model_fallbacks,
        retry=retry or RetryPolicy(max_retries=settings.provider_max_retries, deadline=settings.provider_deadline),
        cooldown_seconds=settings.provider_cooldown_seconds,
        discovery_timeout=settings.model_discovery_timeout,
        discovery_ttl=settings.model_discovery_ttl,
        local_context=local_context,
    )


def _static_window(provider: OpenAIProvider | AnthropicProvider | CohereProvider | LocalProvider, model: str) -> int:
    if isinstance(provider, LocalProvider):
        return provider.context
    short = model.rsplit("/", 1)[-1].lower()
    return next((size for prefix, size in KNOWN_CONTEXT_WINDOWS if short.startswith(prefix)), DEFAULT_CONTEXT_WINDOW)
