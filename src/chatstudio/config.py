"""One Settings object, read from the environment and `.env`, names exactly as in `.env.example`."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ALLOWED_ALGORITHMS = ("HS256", "HS384", "HS512")
MIN_SECRET_KEY_LENGTH = 32
PLACEHOLDER_SECRET_KEYS = frozenset(
    {
        "your-very-secure-random-secret-key-here",
        "your-secret-key-change-in-production",
        "your-secret-key",
        "your-secret-key-here",
        "change-me",
        "changeme",
        "change-this",
        "changethis",
        "secret",
        "secret-key",
        "secretkey",
        "supersecret",
        "super-secret-key",
        "password",
        "development",
        "dev",
        "test",
        "insecure",
    }
)
GENERATE_KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
SECRET_KEY_FILE = "secret_key"

# `.env` files written by hand carry trailing comments (`MAX_UPLOAD_SIZE=10485760  # 10MB`);
# docker's env_file and some shells pass them through verbatim, so non-secret scalars drop them.
_TRAILING_COMMENT = re.compile(r"\s+#.*$")
_COMMENT_TOLERANT_FIELDS = (
    "host",
    "port",
    "workers",
    "reload",
    "log_level",
    "algorithm",
    "access_token_expire_minutes",
    "refresh_token_expire_days",
    "db_pool_size",
    "db_max_overflow",
    "db_pool_timeout",
    "redis_max_connections",
    "rate_limit_per_minute",
    "rate_limit_per_hour",
    "max_upload_size",
    "prometheus_port",
    "smtp_port",
    "smtp_tls",
    "timezone",
    "debug",
    "enable_docs",
    "password_reset_expire_minutes",
    "shutdown_grace_seconds",
    "default_model",
    "local_model_enabled",
    "local_model_threads",
    "local_model_context",
    "provider_connect_timeout",
    "provider_read_timeout",
    "provider_deadline",
    "provider_max_retries",
    "provider_cooldown_seconds",
    "model_discovery_timeout",
    "model_discovery_ttl",
    "sentry_traces_sample_rate",
    "log_format",
    "log_file",
    "log_file_max_bytes",
    "log_file_backup_count",
)


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        value = _TRAILING_COMMENT.sub("", value).strip()
        if value.startswith("["):
            import json

            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class ConfigError(Exception):
    """Start-up configuration problem; its message is one line meant for the operator."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    reload: bool = False
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    debug: bool = False
    enable_docs: bool | None = None
    data_dir: Path = Path("./data")
    public_base_url: str = "http://127.0.0.1:8000"
    timezone: str = "UTC"
    # On SIGTERM, running replies get this long to finish before they are stored as interrupted.
    shutdown_grace_seconds: float = Field(20, ge=0, le=600)

    # security
    secret_key: SecretStr | None = None
    algorithm: str = "HS256"
    access_token_expire_minutes: int = Field(30, ge=1, le=24 * 60)
    refresh_token_expire_days: int = Field(30, ge=1, le=365)
    password_reset_expire_minutes: int = Field(30, ge=5, le=24 * 60)
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (the reverse proxy), IPs or CIDRs.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    admin_email: str | None = None
    admin_password: SecretStr | None = None

    # database
    # repr=False: the URL usually carries the database password; keep it out of any logged repr.
    database_url: str = Field("sqlite+aiosqlite:///./data/chatstudio.db", repr=False)
    # One async worker runs many requests at once and a chat turn checks a connection out three
    # times; connections beyond the pool size are closed on return, so a pool of 5 reconnected
    # under every burst (issue 4: 20 instead of 5 took chat turns from 114 to 142 a second).
    db_pool_size: int = Field(20, ge=1, le=200)
    db_max_overflow: int = Field(10, ge=0, le=500)
    db_pool_timeout: float = Field(30, gt=0, le=600)

    # redis
    redis_url: str | None = Field(None, repr=False)
    redis_password: SecretStr | None = None
    redis_max_connections: int = Field(50, ge=1, le=10_000)

    # providers
    openai_api_key: SecretStr | None = None
    openai_org_id: str | None = None
    openai_default_model: str = "gpt-4o-mini"
    anthropic_api_key: SecretStr | None = None
    cohere_api_key: SecretStr | None = None
    huggingface_api_key: SecretStr | None = None

    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_base_url: str = "https://api.anthropic.com"
    cohere_base_url: str = "https://api.cohere.com"
    huggingface_base_url: str = "https://router.huggingface.co/v1"
    # JSON list of extra OpenAI-compatible servers (Ollama, vLLM, LM Studio, llama.cpp):
    # [{"name": "ollama", "base_url": "http://127.0.0.1:11434/v1", "api_key": null, "models": ["llama3.2"]}]
    openai_compatible_endpoints: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)
    # JSON object alias -> provider/model, e.g. {"fast": "openai/gpt-4o-mini"}
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # JSON object provider/model -> fallbacks tried in order when it fails before the first token
    model_fallbacks: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    default_model: str = "local/smollm2-135m"
    local_model_enabled: bool = True
    local_model_path: Path | None = None
    local_model_threads: int | None = Field(None, ge=1, le=256)
    local_model_context: int = Field(2048, ge=256, le=131_072)
    provider_connect_timeout: float = Field(5, gt=0, le=120)
    provider_read_timeout: float = Field(60, gt=0, le=3600)
    provider_deadline: float = Field(300, gt=0, le=7200)
    provider_max_retries: int = Field(2, ge=0, le=10)
    provider_cooldown_seconds: float = Field(30, ge=0, le=3600)
    model_discovery_timeout: float = Field(2, gt=0, le=60)
    model_discovery_ttl: float = Field(300, ge=0, le=86_400)

    # usage ledger
    # JSON object provider/model (or provider/*) -> USD per million tokens: {"input": 0.15, "output": 0.6}
    model_prices: Annotated[
        dict[str, dict[Literal["input", "output"], Annotated[float, Field(ge=0, le=1_000_000)]]], NoDecode
    ] = Field(default_factory=dict)
    usage_flush_interval: float = Field(2, gt=0, le=300)
    usage_detail_retention_days: int = Field(30, ge=1, le=3650)

    # limits
    # Token budgets per user (input + output tokens), off when unset; an admin can set a user's own.
    daily_token_budget: int | None = Field(None, ge=0)
    monthly_token_budget: int | None = Field(None, ge=0)
    rate_limit_per_minute: int = Field(60, ge=1)
    rate_limit_per_hour: int = Field(1000, ge=1)
    max_upload_size: int = Field(10 * 1024 * 1024, ge=1)
    allowed_extensions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["txt", "md", "pdf", "docx", "png", "jpg", "jpeg"]
    )
    # Uploaded files; default DATA_DIR/uploads.
    upload_dir: Path | None = None
    max_image_pixels: int = Field(25_000_000, ge=1)
    # Largest total a .docx may unpack to (zip-bomb guard).
    max_docx_uncompressed_size: int = Field(100 * 1024 * 1024, ge=1024)

    # observability
    sentry_dsn: SecretStr | None = None
    sentry_environment: str = "production"
    sentry_traces_sample_rate: float = Field(0.0, ge=0, le=1)
    prometheus_port: int | None = Field(None, ge=1, le=65535)
    # When set, /metrics on the main port answers only `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: SecretStr | None = None
    log_format: Literal["json", "text"] = "json"
    log_file: Path | None = None
    log_file_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    log_file_backup_count: int = Field(5, ge=0, le=1000)

    # mail
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "AI Chat Studio <no-reply@localhost>"
    smtp_tls: Literal["starttls", "ssl", "none"] = "starttls"

    @model_validator(mode="before")
    @classmethod
    def _drop_trailing_comments_and_blanks(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        cleaned: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, str):
                if key.lower() in _COMMENT_TOLERANT_FIELDS:
                    value = _TRAILING_COMMENT.sub("", value).strip()
                # An empty assignment (`REDIS_URL=`) in a template means "not set".
                if value == "":
                    continue
            cleaned[key] = value
        return cleaned

    @field_validator("allowed_origins", "allowed_extensions", "forwarded_allow_ips", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("openai_compatible_endpoints", "model_aliases", "model_fallbacks", "model_prices", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("must be valid JSON") from None
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        """Exact `scheme://host[:port]` origins only: a wildcard or `null` would let any page in."""
        origins = []
        for origin in value:
            origin = origin.strip().rstrip("/")
            if origin in ("*", "null"):
                raise ValueError(f"{origin!r} is not allowed; list the exact origins of your front ends")
            if not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]:
                raise ValueError(f"{origin!r} is not an origin like https://chat.example.com")
            origins.append(origin)
        return origins

    @field_validator("allowed_extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        return [ext.lower().lstrip(".") for ext in value]

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("algorithm")
    @classmethod
    def _check_algorithm(cls, value: str) -> str:
        if value not in ALLOWED_ALGORITHMS:
            raise ValueError(f"must be one of {', '.join(ALLOWED_ALGORITHMS)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as UTC or Europe/Berlin") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the plain URLs operators copy from elsewhere and pick our async driver."""
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("mysql://", "mysql+aiomysql://"),
            ("mariadb://", "mysql+aiomysql://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        if not value.startswith(("postgresql+", "mysql+", "mariadb+", "sqlite+")):
            raise ValueError("must be a sqlite, postgresql or mysql URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _mysql_utf8mb4(cls, value: str) -> str:
        """MySQL's legacy `utf8` cannot store emoji; ask for utf8mb4 unless the URL says otherwise."""
        if value.startswith(("mysql+", "mariadb+")) and "charset=" not in value:
            value += ("&" if "?" in value else "?") + "charset=utf8mb4"
        return value

    @property
    def docs_enabled(self) -> bool:
        return self.debug if self.enable_docs is None else self.enable_docs

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def signing_key(self) -> str:
        """The JWT signing key; `resolve_secret_key` must have run (create_app does it)."""
        if self.secret_key is None:
            raise ConfigError("SECRET_KEY is not set")
        return self.secret_key.get_secret_value()

    def resolve_secret_key(self) -> None:
        """Refuse weak keys in production; in DEBUG, make and keep one so `make run` just works."""
        key = self.secret_key.get_secret_value() if self.secret_key else None
        if key is None:
            if not self.debug:
                raise ConfigError(f"SECRET_KEY is not set; {GENERATE_KEY_HINT}")
            self.secret_key = SecretStr(_load_or_create_key_file(self.data_dir / SECRET_KEY_FILE))
            return
        problem = secret_key_problem(key, self.algorithm)
        if problem and not self.debug:
            raise ConfigError(f"SECRET_KEY {problem}; {GENERATE_KEY_HINT}")
        if problem:
            logging.getLogger("chatstudio").warning(
                "SECRET_KEY %s; accepted only because DEBUG=true. %s", problem, GENERATE_KEY_HINT
            )


def secret_key_problem(key: str, algorithm: str = "HS256") -> str | None:
    if key.strip().lower() in PLACEHOLDER_SECRET_KEYS:
        return "is a known placeholder"
    # RFC 7518 3.2: an HMAC key at least as long as the hash output.
    minimum = max(MIN_SECRET_KEY_LENGTH, {"HS384": 48, "HS512": 64}.get(algorithm, 0))
    if len(key) < minimum:
        return f"is shorter than {minimum} characters (for {algorithm})"
    if len(set(key)) < 8:
        return "has too little variety to be random"
    return None


def _load_or_create_key_file(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written in full under a private name, then linked into place: of two processes starting
        # together one wins the link and the other reads a complete key, never a half-written file.
        staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(staging, path)
        finally:
            staging.unlink()
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"SECRET_KEY file {path} is empty; delete it to have a new key made, or set SECRET_KEY")
    return key


def load_settings(**overrides: Any) -> Settings:
    """Build Settings or raise ConfigError with one line that names the offending variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        raw = first.get("input")
        shown = "" if name in _SECRET_NAMES or isinstance(raw, dict) else f" (got {raw!r})"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid {name}: {message}{shown}") from None
    settings.resolve_secret_key()
    return settings


_SECRET_NAMES = frozenset(
    {
        "SECRET_KEY",
        "REDIS_PASSWORD",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "COHERE_API_KEY",
        "HUGGINGFACE_API_KEY",
        "SENTRY_DSN",
        "METRICS_TOKEN",
        "SMTP_PASSWORD",
        "ADMIN_PASSWORD",
        "OPENAI_COMPATIBLE_ENDPOINTS",
        "DATABASE_URL",
        "REDIS_URL",
    }
)
