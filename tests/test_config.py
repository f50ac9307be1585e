"""Settings: env prefix, provider list validation, and production refusing unsafe configurations."""

from __future__ import annotations

import pytest

from helpline.config import ConfigError, Settings


def test_environment_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELPLINE_CACHE_TTL_S", "120")
    monkeypatch.setenv("HELPLINE_PROVIDERS", " extractive ")
    settings = Settings()
    assert settings.cache_ttl_s == 120
    assert settings.provider_names == ["extractive"]


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown providers"):
        Settings(providers="extractive,skynet")


def test_a_whole_reply_deadline_that_leaves_no_model_time_is_refused() -> None:
    with pytest.raises(ValueError, match=r"PROVIDER_TIMEOUT_S .* must be longer than"):
        Settings(provider_timeout_s=3, first_token_timeout_s=4)
    assert Settings(provider_timeout_s=5, first_token_timeout_s=4).provider_timeout_s == 5


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ["SQLite", "ADMIN_TOKEN is not set"]),
        ({"database_url": "postgresql+asyncpg://db/x"}, ["ADMIN_TOKEN is not set"]),
        ({"database_url": "postgresql+asyncpg://db/x", "admin_token": "change-me"}, ["sample value"]),
        ({"database_url": "mysql+asyncmy://db/x", "admin_token": "short"}, ["sample value or shorter"]),
        (
            {"database_url": "mysql+asyncmy://db/x", "admin_token": "a" * 32, "gemini_api_key": "secret"},
            ["GEMINI_API_KEY is a sample value"],
        ),
    ],
)
def test_production_refuses_and_says_why(overrides: dict[str, str], expected: list[str]) -> None:
    settings = Settings.model_validate({"env": "production", **overrides})
    with pytest.raises(ConfigError) as raised:
        settings.check_can_start()
    for fragment in expected:
        assert fragment in str(raised.value)


def test_production_starts_with_a_real_database_and_secret() -> None:
    settings = Settings(env="production", database_url="postgresql+asyncpg://db/x", admin_token="k" * 40)
    settings.check_can_start()
    assert settings.production_problems() == []


def test_development_defaults_are_embedded() -> None:
    settings = Settings(_env_file=None)
    assert settings.is_sqlite
    assert settings.redis_url == ""
    assert settings.production_problems() == []
