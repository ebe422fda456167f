"""Settings: every variable under its exact name, `.env` in the working directory, one-line errors that
name the variable and never show a secret, the secret-key rules, and docs switched by DEBUG/ENABLE_DOCS."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from chatstudio.config import PLACEHOLDER_SECRET_KEYS, ConfigError, Settings, load_settings
from tests.helpers_proc import SETTINGS_VARIABLES

STRONG_KEY = "q7Lm2-Xv9Rt4_Kp8Zw3Ny6Bc1Hd5Fg0Js" * 2  # 68 characters: long enough for HS512 too
OTHER_STRONG_KEY = "Zr8Tq3-Wm6Yn1_Pk4Vx7Lc2Hb9Gd0Fs5Aj" * 2
GENERATE_HINT = "secrets.token_urlsafe"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting from the developer's shell, no `.env` from the checkout: a tmp working directory."""
    for name in list(os.environ):
        if name.upper() in SETTINGS_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


# (variable, value in the environment, how to read it back, the value expected)
_PLAIN: Callable[[Settings, str], Any] = lambda s, field: getattr(s, field)  # noqa: E731
_SECRET: Callable[[Settings, str], Any] = lambda s, field: _secret(getattr(s, field))  # noqa: E731
VARIABLES: list[tuple[str, str, Callable[[Settings, str], Any], Any]] = [
    ("HOST", "0.0.0.0", _PLAIN, "0.0.0.0"),
    ("PORT", "9123", _PLAIN, 9123),
    ("WORKERS", "3", _PLAIN, 3),
    ("RELOAD", "true", _PLAIN, True),
    ("LOG_LEVEL", "WARNING", _PLAIN, "warning"),
    ("SECRET_KEY", OTHER_STRONG_KEY, _SECRET, OTHER_STRONG_KEY),
    ("ALGORITHM", "HS512", _PLAIN, "HS512"),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "45", _PLAIN, 45),
    ("ALLOWED_ORIGINS", "https://a.example,https://b.example", _PLAIN, ["https://a.example", "https://b.example"]),
    ("DATABASE_URL", "postgresql+asyncpg://app@db:5432/app", _PLAIN, "postgresql+asyncpg://app@db:5432/app"),
    ("DB_POOL_SIZE", "7", _PLAIN, 7),
    ("DB_MAX_OVERFLOW", "3", _PLAIN, 3),
    ("DB_POOL_TIMEOUT", "12.5", _PLAIN, 12.5),
    ("REDIS_URL", "redis://cache:6379/2", _PLAIN, "redis://cache:6379/2"),
    ("REDIS_PASSWORD", "redis-pass-value", _SECRET, "redis-pass-value"),
    ("REDIS_MAX_CONNECTIONS", "20", _PLAIN, 20),
    ("OPENAI_API_KEY", "sk-openai-value", _SECRET, "sk-openai-value"),
    ("OPENAI_ORG_ID", "org-123", _PLAIN, "org-123"),
    ("OPENAI_DEFAULT_MODEL", "gpt-4.1-mini", _PLAIN, "gpt-4.1-mini"),
    ("ANTHROPIC_API_KEY", "sk-ant-value", _SECRET, "sk-ant-value"),
    ("COHERE_API_KEY", "cohere-value", _SECRET, "cohere-value"),
    ("HUGGINGFACE_API_KEY", "hf_value", _SECRET, "hf_value"),
    ("RATE_LIMIT_PER_MINUTE", "17", _PLAIN, 17),
    ("RATE_LIMIT_PER_HOUR", "170", _PLAIN, 170),
    ("MAX_UPLOAD_SIZE", "2048", _PLAIN, 2048),
    ("ALLOWED_EXTENSIONS", "txt, .PDF", _PLAIN, ["txt", "pdf"]),
    ("SENTRY_DSN", "https://key@sentry.example/1", _SECRET, "https://key@sentry.example/1"),
    ("SENTRY_ENVIRONMENT", "staging", _PLAIN, "staging"),
    ("PROMETHEUS_PORT", "9100", _PLAIN, 9100),
    ("SMTP_HOST", "mail.example", _PLAIN, "mail.example"),
    ("SMTP_PORT", "2525", _PLAIN, 2525),
    ("SMTP_USERNAME", "mailer", _PLAIN, "mailer"),
    ("SMTP_PASSWORD", "smtp-pass-value", _SECRET, "smtp-pass-value"),
    ("SMTP_FROM", "Studio <studio@example.com>", _PLAIN, "Studio <studio@example.com>"),
    ("TIMEZONE", "Europe/Berlin", _PLAIN, "Europe/Berlin"),
    ("DEBUG", "true", _PLAIN, True),
    ("ENABLE_DOCS", "true", _PLAIN, True),
]


@pytest.mark.parametrize(("name", "raw", "read", "expected"), VARIABLES, ids=[v[0] for v in VARIABLES])
def test_variable_is_read_under_its_exact_name(
    isolated_env: pytest.MonkeyPatch, name: str, raw: str, read: Callable[[Settings, str], Any], expected: Any
) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    field = name.lower()
    assert read(load_settings(), field) != expected, "the test value must differ from the default"
    isolated_env.setenv(name, raw)
    assert read(load_settings(), field) == expected


def test_every_listed_variable_is_a_setting() -> None:
    names = {v[0] for v in VARIABLES}
    assert len(names) == len(VARIABLES)
    assert names <= {field.upper() for field in Settings.model_fields}


def test_env_file_in_working_directory_with_trailing_comments(isolated_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# production settings\n"
        f"SECRET_KEY={STRONG_KEY}\n"
        "MAX_UPLOAD_SIZE=10485760  # 10MB\n"
        "PORT=9001 # behind nginx\n"
        "DEBUG=false  # never true in production\n"
        "ALLOWED_ORIGINS=https://a.example,https://b.example  # two front-ends\n"
        "REDIS_URL=\n"
    )
    settings = load_settings()
    assert settings.max_upload_size == 10485760
    assert settings.port == 9001
    assert settings.debug is False
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.redis_url is None
    assert _secret(settings.secret_key) == STRONG_KEY


def test_environment_wins_over_env_file(isolated_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"SECRET_KEY={STRONG_KEY}\nPORT=9001\n")
    isolated_env.setenv("PORT", "9002")
    assert load_settings().port == 9002


def test_env_file_is_read_from_the_working_directory_only(isolated_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text(f"SECRET_KEY={STRONG_KEY}\nPORT=9001\n")
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    assert load_settings().port == 8000
    isolated_env.chdir(elsewhere)
    assert load_settings().port == 9001


def test_trailing_comment_passed_through_the_environment_is_dropped(isolated_env: pytest.MonkeyPatch) -> None:
    # docker's env_file hands such lines over verbatim.
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    isolated_env.setenv("MAX_UPLOAD_SIZE", "10485760  # 10MB")
    isolated_env.setenv("ACCESS_TOKEN_EXPIRE_MINUTES", "15 # short")
    settings = load_settings()
    assert settings.max_upload_size == 10485760
    assert settings.access_token_expire_minutes == 15


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://app:pw@db:5432/app", "postgresql+asyncpg://app:pw@db:5432/app"),
        ("postgres://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("postgresql+asyncpg://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("mysql://app:pw@db:3306/app", "mysql+aiomysql://app:pw@db:3306/app?charset=utf8mb4"),
        ("mysql://app@db/app?ssl=true", "mysql+aiomysql://app@db/app?ssl=true&charset=utf8mb4"),
        ("mysql+aiomysql://app@db/app?charset=latin1", "mysql+aiomysql://app@db/app?charset=latin1"),
        ("sqlite:///./data/app.db", "sqlite+aiosqlite:///./data/app.db"),
        ("sqlite+aiosqlite:////abs/app.db", "sqlite+aiosqlite:////abs/app.db"),
    ],
)
def test_database_url_gets_an_async_driver(isolated_env: pytest.MonkeyPatch, given: str, expected: str) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    isolated_env.setenv("DATABASE_URL", given)
    assert load_settings().database_url == expected


@pytest.mark.parametrize(
    ("name", "comma", "json_list", "expected"),
    [
        (
            "ALLOWED_ORIGINS",
            "https://a.example, https://b.example",
            '["https://a.example", "https://b.example"]',
            ["https://a.example", "https://b.example"],
        ),
        ("ALLOWED_EXTENSIONS", "txt,md,.PNG", '["txt", "md", ".PNG"]', ["txt", "md", "png"]),
    ],
)
def test_lists_accept_comma_and_json_forms(
    isolated_env: pytest.MonkeyPatch, name: str, comma: str, json_list: str, expected: list[str]
) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    isolated_env.setenv(name, comma)
    assert getattr(load_settings(), name.lower()) == expected
    isolated_env.setenv(name, json_list)
    assert getattr(load_settings(), name.lower()) == expected


@pytest.mark.parametrize(
    ("debug", "enable_docs", "expected"),
    [("false", None, False), ("true", None, True), ("false", "true", True), ("true", "false", False)],
)
def test_docs_follow_debug_unless_enable_docs_says_otherwise(
    isolated_env: pytest.MonkeyPatch, debug: str, enable_docs: str | None, expected: bool
) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    isolated_env.setenv("DEBUG", debug)
    if enable_docs is not None:
        isolated_env.setenv("ENABLE_DOCS", enable_docs)
    assert load_settings().docs_enabled is expected


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms_are_accepted(isolated_env: pytest.MonkeyPatch, algorithm: str) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    isolated_env.setenv("ALGORITHM", algorithm)
    assert load_settings().algorithm == algorithm


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("ALGORITHM", "RS256"),
        ("ALGORITHM", "none"),
        ("TIMEZONE", "Mars/Base"),
        ("DATABASE_URL", "oracle://x"),
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
        ("WORKERS", "0"),
        ("LOG_LEVEL", "loud"),
        ("DEBUG", "maybe"),
        ("MAX_UPLOAD_SIZE", "ten megabytes"),
        ("ALLOWED_ORIGINS", "[not json"),
        ("MODEL_ALIASES", "not json"),
        ("OPENAI_COMPATIBLE_ENDPOINTS", "[{"),
    ],
)
def test_invalid_value_gives_one_line_naming_the_variable(
    isolated_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = _error(isolated_env, SECRET_KEY=STRONG_KEY, **{name: value})
    assert message.startswith(f"invalid {name}:"), message


SECRET_VALUES = {
    "SECRET_KEY": OTHER_STRONG_KEY,
    "OPENAI_API_KEY": "sk-openai-SHOULD-NOT-LEAK",
    "ANTHROPIC_API_KEY": "sk-ant-SHOULD-NOT-LEAK",
    "COHERE_API_KEY": "cohere-SHOULD-NOT-LEAK",
    "HUGGINGFACE_API_KEY": "hf_SHOULD_NOT_LEAK",
    "SMTP_PASSWORD": "smtp-SHOULD-NOT-LEAK",
    "REDIS_PASSWORD": "redis-SHOULD-NOT-LEAK",
    "REDIS_URL": "redis://:redisurl-SHOULD-NOT-LEAK@cache:6379/0",
    "SENTRY_DSN": "https://dsn-SHOULD-NOT-LEAK@sentry.example/1",
}


def _assert_no_secret(message: str, *extra: str) -> None:
    for secret in (*SECRET_VALUES.values(), *extra):
        assert secret not in message, message
    assert "SHOULD-NOT-LEAK" not in message
    assert "SHOULD_NOT_LEAK" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("ALGORITHM", "RS256"), ("TIMEZONE", "Mars/Base"), ("ACCESS_TOKEN_EXPIRE_MINUTES", "0")],
)
def test_errors_never_show_the_secrets_that_are_set(isolated_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    message = _error(isolated_env, **SECRET_VALUES, **{name: value})
    assert name in message
    _assert_no_secret(message)


def test_invalid_database_url_does_not_show_its_password(isolated_env: pytest.MonkeyPatch) -> None:
    message = _error(isolated_env, SECRET_KEY=STRONG_KEY, DATABASE_URL="oracle://scott:db-SHOULD-NOT-LEAK@db/orcl")
    assert message.startswith("invalid DATABASE_URL:")
    _assert_no_secret(message, "db-SHOULD-NOT-LEAK", "scott")


def test_invalid_compatible_endpoints_do_not_show_their_api_keys(isolated_env: pytest.MonkeyPatch) -> None:
    broken = '[{"name": "vllm", "base_url": "http://127.0.0.1:8001/v1", "api_key": "sk-vllm-SHOULD-NOT-LEAK"}'
    message = _error(isolated_env, SECRET_KEY=STRONG_KEY, OPENAI_COMPATIBLE_ENDPOINTS=broken)
    assert "OPENAI_COMPATIBLE_ENDPOINTS" in message
    _assert_no_secret(message)


@pytest.mark.parametrize(
    "key",
    [
        "short-Key-7",
        "q7Lm2-Xv9Rt4_Kp8Zw3Ny6Bc1Hd5Fg0",  # 31 characters: one short of the minimum
        "abababababababababababababababababababab",  # long enough, not random
    ],
)
def test_weak_secret_key_is_refused_without_being_shown(isolated_env: pytest.MonkeyPatch, key: str) -> None:
    message = _error(isolated_env, DEBUG="false", SECRET_KEY=key)
    assert "SECRET_KEY" in message
    assert GENERATE_HINT in message
    assert key not in message


@pytest.mark.parametrize(
    "key",
    [
        "your-very-secure-random-secret-key-here",
        "your-secret-key-change-in-production",
        "changeme",
        "secret",
        "CHANGEME",
    ],
)
def test_placeholder_secret_key_is_refused(isolated_env: pytest.MonkeyPatch, key: str) -> None:
    assert key.lower() in PLACEHOLDER_SECRET_KEYS
    message = _error(isolated_env, DEBUG="false", SECRET_KEY=key)
    assert "SECRET_KEY" in message
    assert "placeholder" in message
    assert GENERATE_HINT in message


@pytest.mark.parametrize("value", [None, ""])
def test_missing_secret_key_is_refused_in_production(isolated_env: pytest.MonkeyPatch, value: str | None) -> None:
    if value is not None:
        isolated_env.setenv("SECRET_KEY", value)
    message = _error(isolated_env, DEBUG="false")
    assert message.startswith("SECRET_KEY is not set")
    assert GENERATE_HINT in message


def test_secret_key_of_exactly_32_random_characters_is_accepted(isolated_env: pytest.MonkeyPatch) -> None:
    key = STRONG_KEY[:32]
    isolated_env.setenv("SECRET_KEY", key)
    isolated_env.setenv("ALGORITHM", "HS256")
    assert load_settings().signing_key == key


@pytest.mark.parametrize(("algorithm", "minimum"), [("HS384", 48), ("HS512", 64)])
def test_longer_hashes_need_longer_keys(isolated_env: pytest.MonkeyPatch, algorithm: str, minimum: int) -> None:
    isolated_env.setenv("ALGORITHM", algorithm)
    message = _error(isolated_env, DEBUG="false", SECRET_KEY=STRONG_KEY[: minimum - 1])
    assert message.startswith("SECRET_KEY is shorter than")
    assert algorithm in message
    isolated_env.setenv("SECRET_KEY", STRONG_KEY[:minimum])
    assert load_settings().signing_key == STRONG_KEY[:minimum]


def test_debug_generates_a_private_key_file_once_and_reuses_it(
    isolated_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "fresh" / "data"
    isolated_env.setenv("DATA_DIR", str(data_dir))
    isolated_env.setenv("DEBUG", "true")
    first = load_settings().signing_key
    key_file = data_dir / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first
    assert len(first) >= 32
    assert sorted(p.name for p in data_dir.iterdir()) == ["secret_key"]  # no staging file left behind

    assert load_settings().signing_key == first

    isolated_env.setenv("DATA_DIR", str(tmp_path / "other"))
    assert load_settings().signing_key != first  # random, not a constant


def test_debug_with_a_secret_key_writes_no_key_file(isolated_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolated_env.setenv("DEBUG", "true")
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    assert load_settings().signing_key == STRONG_KEY
    assert not (tmp_path / "data" / "secret_key").exists()


def test_empty_key_file_is_refused_not_used(isolated_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret_key").write_text("\n")
    message = _error(isolated_env, DEBUG="true")
    assert "SECRET_KEY" in message
    assert "empty" in message


DOC_PATHS = ["/docs", "/redoc", "/openapi.json"]


async def _get_all(settings: Settings, paths: list[str]) -> list[httpx.Response]:
    from chatstudio.main import create_app

    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        return [await client.get(path) for path in paths]


async def test_docs_are_json_404s_in_production_by_default(isolated_env: pytest.MonkeyPatch) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    isolated_env.setenv("DEBUG", "false")
    health, *docs = await _get_all(load_settings(), ["/health", *DOC_PATHS])
    assert health.status_code == 200
    for path, response in zip(DOC_PATHS, docs, strict=True):
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("application/json"), path
        assert response.json()["error"]["code"] == "not_found", path


@pytest.mark.parametrize(("env"), [{"DEBUG": "false", "ENABLE_DOCS": "true"}, {"DEBUG": "true"}])
async def test_docs_are_served_when_enabled(isolated_env: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    isolated_env.setenv("SECRET_KEY", STRONG_KEY)
    for name, value in env.items():
        isolated_env.setenv(name, value)
    docs, redoc, openapi = await _get_all(load_settings(), DOC_PATHS)
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert redoc.status_code == 200
    assert "redoc" in redoc.text.lower()
    assert openapi.status_code == 200
    assert "/api/v1/auth/login" in openapi.json()["paths"]
