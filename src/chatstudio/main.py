"""The application factory: lifespan resources, middleware, routers and the one error renderer."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from chatstudio import __version__
from chatstudio.admin.router import router as admin_router
from chatstudio.apikeys.auth import ApiKeyAuthenticator
from chatstudio.apikeys.router import router as api_keys_router
from chatstudio.audit.service import AuditLog
from chatstudio.budgets import Budgets
from chatstudio.chat.models_api import router as models_router
from chatstudio.chat.router import router as conversations_router
from chatstudio.chat.turns import TurnManager
from chatstudio.chat.ws import PATH as CHAT_SOCKET_PATH
from chatstudio.chat.ws import router as ws_router
from chatstudio.chat.ws import serve_chat_socket
from chatstudio.config import Settings, load_settings
from chatstudio.db import create_engine, create_sessionmaker, session_scope
from chatstudio.edge import Edge
from chatstudio.errors import AppError, error_payload
from chatstudio.files.router import router as files_router
from chatstudio.health import router as health_router
from chatstudio.http_security import parse_networks
from chatstudio.idempotency import IdempotencyGate
from chatstudio.llm.base import LLMError
from chatstudio.llm.registry import build_registry
from chatstudio.mail import Mailer
from chatstudio.observability.setup import install_observability
from chatstudio.openai_api.relay import CompletionsFastPath
from chatstudio.openai_api.router import router as openai_router
from chatstudio.search.router import router as search_router
from chatstudio.throttle import Throttle
from chatstudio.usage.ledger import UsageLedger
from chatstudio.usage.router import router as usage_router
from chatstudio.users.router import auth_router, users_router
from chatstudio.users.service import AuthService
from chatstudio.web.router import router as web_router

logger = logging.getLogger("chatstudio")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def install_error_handlers(app: FastAPI) -> None:
    async def app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        return JSONResponse(
            error_payload(exc.code, exc.message, _request_id(request)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def llm_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LLMError)
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return JSONResponse(
            error_payload(exc.code, exc.message, _request_id(request)), status_code=exc.status_code, headers=headers
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {
                "loc": list(err.get("loc", ())),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        return JSONResponse(
            error_payload(
                "validation_error",
                "The request is not valid.",
                _request_id(request),
                details=details,
            ),
            status_code=422,
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "The request could not be processed."
        return JSONResponse(
            error_payload(code, message, _request_id(request)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log only; the client gets the request id to quote.
        logger.exception("unhandled error (request_id=%s)", _request_id(request))
        return JSONResponse(
            error_payload("internal_error", "An unexpected error occurred.", _request_id(request)),
            status_code=500,
        )

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(LLMError, llm_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


async def _bootstrap_admin(app: FastAPI, settings: Settings) -> None:
    """ADMIN_EMAIL (+ ADMIN_PASSWORD) makes that account an admin at start-up. An existing account is
    promoted only when ADMIN_PASSWORD matches it: emails are not verified, so a stranger who
    registered the address first must not inherit the role."""
    if not settings.admin_email:
        return
    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    async with session_scope(app.state.sessionmaker) as session:
        service = AuthService(session, settings)
        try:
            await service.ensure_admin_at_startup(email=settings.admin_email, password=password)
        except AppError as exc:
            logger.warning("ADMIN_EMAIL not applied: %s", exc.message)


class ChatSocketShortcut:
    """`/ws/chat` straight to its endpoint: a socket lives for hours, and every layer it passes keeps
    a frame alive for as long (the per-socket memory budget of issue 4)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == CHAT_SOCKET_PATH:
            await serve_chat_socket(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class StudioApp(FastAPI):
    """FastAPI with our edge middleware outside the framework's own stack, so the completions fast
    path (which skips routing, see openai_api.relay) gets the request id, metrics, access log,
    security headers and rate limit exactly as every routed request does."""

    edge: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return self.edge(inner) if self.edge is not None else inner


def _edge(settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    """The edge (request id, proxy headers, rate limit, security headers, metrics and access log),
    then the completions fast path and the chat socket in front of the framework."""
    trusted = parse_networks(settings.forwarded_allow_ips)

    def wrap(inner: ASGIApp) -> ASGIApp:
        app = CompletionsFastPath(ChatSocketShortcut(inner))
        return Edge(app, key=settings.signing_key, algorithm=settings.algorithm, trusted=trusted)

    return wrap


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
        )
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.redis = _create_redis(settings)
        app.state.throttle = Throttle.create(
            app.state.redis, settings.rate_limit_per_minute, settings.rate_limit_per_hour
        )
        app.state.audit = AuditLog(app.state.sessionmaker)
        app.state.registry = registry = build_registry(settings)
        app.state.api_keys = ApiKeyAuthenticator(app.state.sessionmaker)
        app.state.idempotency = idempotency = IdempotencyGate(
            app.state.sessionmaker,
            wait_limit=settings.provider_deadline + 30,
            stale_after=timedelta(seconds=settings.provider_deadline + 60),
        )
        app.state.usage = usage = UsageLedger.from_settings(app.state.sessionmaker, settings)
        usage.add_maintenance(idempotency.purge_expired)
        usage.start()
        app.state.budgets = budgets = Budgets(usage, settings.daily_token_budget, settings.monthly_token_budget)
        app.state.turns = turns = TurnManager(
            app.state.sessionmaker, registry, settings.default_model, usage, budgets=budgets
        )
        restore_signal = _drain_on_sigterm(turns, settings.shutdown_grace_seconds)
        try:
            await _bootstrap_admin(app, settings)
            if getattr(app.state, "freeze_startup_objects", False):
                settle_heap()
            yield
        finally:
            restore_signal()
            await turns.drain(settings.shutdown_grace_seconds)
            await idempotency.aclose()
            await usage.aclose()  # the last buffered usage records are written here
            await app.state.audit.flush()
            await registry.aclose()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            await engine.dispose()

    docs = settings.docs_enabled
    app = StudioApp(
        title="AI Chat Studio",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        swagger_ui_parameters={"persistAuthorization": True},
        # Our own Prometheus metrics and logs; the framework's OpenTelemetry hooks would cost a
        # provider look-up per request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.edge = _edge(settings)
    app.state.settings = settings
    app.state.mailer = Mailer(settings)
    app.state.redis = None
    install_error_handlers(app)
    # Inside the edge (see _edge): compression, then CORS, then the routes.
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_credentials=False,  # bearer tokens, never cookies: no credentialed CORS needed
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
            max_age=600,
        )
    # Sentry, gzip and /metrics; it also wraps the lifespan to attach to the engine and the provider
    # registry once they exist.
    install_observability(app, settings)

    app.include_router(health_router)
    api_prefix = "/api/v1"
    app.include_router(auth_router, prefix=api_prefix)
    app.include_router(users_router, prefix=api_prefix)
    app.include_router(conversations_router, prefix=api_prefix)
    app.include_router(models_router, prefix=api_prefix)
    app.include_router(admin_router, prefix=api_prefix)
    app.include_router(search_router, prefix=api_prefix)
    app.include_router(files_router, prefix=api_prefix)
    app.include_router(api_keys_router, prefix=api_prefix)
    app.include_router(usage_router, prefix=api_prefix)
    app.include_router(openai_router)
    app.include_router(ws_router)
    app.include_router(web_router)
    return app


# Young objects the collector lets pile up before it looks at them (Python's default: 700).
YOUNG_GENERATION_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once a served worker has started: everything built so far lives as long as the process, so
    it is frozen out of the collector's sight (a full collection then walks only what requests
    allocate; it halved the /v1 p99 in the bench). And the young generation may grow larger before
    a pass: a request's objects die by reference counting, yet at the default threshold the objects
    of the requests in flight alone set off a pass every few requests (measured at c=64 on a relayed
    completion: ~3% of the server's CPU, ~18 µs per request); at 10,000 there were none in 16,000
    requests. What it costs is cyclic garbage living a little longer: at most that many objects."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


def create_served_app() -> FastAPI:
    """The factory `chatstudio serve` hands uvicorn: one app per worker process, which may freeze
    its start-up objects (never done in-process, where apps come and go, as in the tests)."""
    app = create_app()
    app.state.freeze_startup_objects = True
    return app


def _drain_on_sigterm(turns: TurnManager, grace: float) -> Callable[[], None]:
    """Start draining turns the moment SIGTERM arrives, not when uvicorn gets to the lifespan's end.

    uvicorn waits for open responses (our SSE streams) before it runs the shutdown half of the
    lifespan, so the drain must begin from the signal: new turns get 503, running ones have `grace`
    seconds, then are stored as `interrupted` and their streams end with an error event; only then
    is the signal handed to uvicorn. Only chained onto a handler uvicorn installed, so tests and
    other hosts are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    owner = getattr(previous, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("uvicorn"):
        return lambda: None
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []  # holds the drain task so it is not garbage-collected

    def hand_over(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)

    signalled: list[bool] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        if signalled:  # a second signal: stop waiting
            hand_over(signum, frame)
            return
        signalled.append(True)

        def start() -> None:
            task = loop.create_task(turns.drain(grace))
            # uvicorn closes WebSockets as soon as it starts shutting down; hand over only once the
            # turns have ended, so every client still gets its final event.
            task.add_done_callback(lambda _: hand_over(signum, frame))
            draining.append(task)

        loop.call_soon_threadsafe(start)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _create_redis(settings: Settings) -> Any:
    if not settings.redis_url:
        return None
    from redis.asyncio import Redis

    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return Redis.from_url(
        settings.redis_url,
        password=password,
        max_connections=settings.redis_max_connections,
        socket_connect_timeout=2,
        socket_timeout=5,
        decode_responses=False,
    )
