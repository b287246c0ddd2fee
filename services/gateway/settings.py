"""Settings of the gateway (flags or ``COLMENA_*`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from colmena_core.names import check_name

from ..common import RecordingSettings


class GatewaySettings(RecordingSettings):
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
    max_json_depth: int = Field(
        default=64,
        ge=4,
        le=200,
        description="Deepest nesting of a JSON request body (HTTP 422 deeper; checked before parsing)",
    )
    max_streams_per_client: int = Field(
        default=8,
        ge=1,
        description="Result and monitoring streams (WebSocket, SSE) one client may hold open at "
        "once (HTTP 429 beyond)",
    )
    max_polls_per_client: int = Field(
        default=8,
        ge=1,
        description="Long-polls one client may have waiting at once, those whose results wait "
        "for their acknowledgement included (HTTP 429 beyond)",
    )
    broker_connections: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most broker connections for result streams and long-polls (one more "
        "publishes tasks)",
    )
    channels_per_connection: int = Field(
        default=1000,
        ge=1,
        le=2000,
        description="Result streams and long-polls on each of those connections (the broker "
        "allows 2,047 channels per connection); all in use, new ones get HTTP 503 and /readyz "
        "says not ready",
    )
    send_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a stream waits for its client to take a result before closing "
        "(results not written wait in the broker for the next stream)",
    )
    public_details: bool = Field(
        default=False,
        description="Show client names on /metrics and broker errors on /readyz without a token",
    )
    allowed_origins: str = Field(
        default="",
        description="Web origins (besides the gateway's own) whose pages may open streams with "
        "the colmena_token cookie, comma-separated",
    )
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
    def origin_list(self) -> frozenset[str]:
        """Origins allowed to use the token cookie, besides the gateway's own."""
        return frozenset(origin.rstrip("/") for origin in self.split(self.allowed_origins))

    @property
    def stream_capacity(self) -> int:
        """Result streams and long-polls the gateway's broker connections can hold."""
        return self.broker_connections * self.channels_per_connection

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
