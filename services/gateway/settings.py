"""Settings of the gateway (flags or ``COLMENA_*`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from colmena_core.names import check_name

from ..common import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Expose a campaign over HTTP: submit tasks, stream results, watch the campaign."""

    host: str = Field(default="0.0.0.0", description="Address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on")
    env: Literal["development", "production"] = Field(
        default="production",
        description="'development' allows running without API tokens (every caller is 'anonymous')",
    )
    gateway_tokens: SecretStr = Field(
        default=SecretStr(""),
        description="API tokens, comma-separated 'token:client' pairs; each client sees only its own tasks",
    )
    topics: str = Field(
        default="default", description="Topics API clients may use, comma-separated"
    )
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Largest request body accepted (HTTP 413 above)"
    )
    max_batch: int = Field(default=1000, gt=0, description="Most tasks in one batch submission")
    long_poll_timeout: float = Field(
        default=30.0, gt=0, le=300, description="Longest wait of GET /api/v1/results, seconds"
    )
    server_ttl: float = Field(
        default=30.0,
        gt=0,
        description="Forget a task server after this many seconds without a heartbeat",
    )
    gateway_monitors: str = Field(
        default="",
        description="Clients (names from the tokens, comma-separated) that may watch the whole "
        "campaign: every client's results and the dead letters",
    )
    result_prefetch: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="Results a stream holds unacknowledged at once (WebSocket with client acks)",
    )
    ack_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds results of a long-poll with ack=client wait for their "
        "acknowledgement before going back to the broker",
    )
    publish_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a submission waits for the broker to confirm its tasks (HTTP 503 after)",
    )

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: str) -> str:
        if not cls.split(value):
            raise ValueError("at least one topic is needed")
        for topic in cls.split(value):
            check_name(topic, "each topic")
        return value

    @staticmethod
    def split(value: str) -> list[str]:
        """A comma-separated list as a list."""
        return [item.strip() for item in value.split(",") if item.strip()]

    @property
    def topic_list(self) -> list[str]:
        return self.split(self.topics)

    @property
    def monitor_clients(self) -> frozenset[str]:
        """Clients that may watch every result of the campaign and its dead letters."""
        return frozenset(self.split(self.gateway_monitors))

    @property
    def tokens(self) -> dict[str, str]:
        """API token → client name."""
        pairs: dict[str, str] = {}
        for item in self.split(self.gateway_tokens.get_secret_value()):
            token, _, client = item.partition(":")
            pairs[token.strip()] = client.strip()
        return pairs

    @model_validator(mode="after")
    def _require_tokens(self) -> GatewaySettings:
        tokens = self.tokens
        for token, client in tokens.items():
            if not sep_ok(token, client):
                raise ValueError(
                    "COLMENA_GATEWAY_TOKENS must be comma-separated 'token:client' pairs with tokens "
                    "of at least 16 characters and clients of at most 60 letters, digits, '-' and '_'"
                )
        if not tokens and self.env != "development":
            raise ValueError(
                "no API tokens: set COLMENA_GATEWAY_TOKENS='token:client,...' "
                "(or COLMENA_ENV=development to accept anonymous callers)"
            )
        return self


def sep_ok(token: str, client: str) -> bool:
    """Whether one token entry is acceptable."""
    try:  # the client's results go to the client ID "api-<client>"
        check_name(f"api-{client}", "client")
    except ValueError:
        return False
    return len(token) >= 16 and client.replace("-", "").replace("_", "").isalnum()
