"""Settings of the thinker service (flags or ``COLMENA_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, field_validator

from colmena_core.names import check_name

from ..common import HealthHost, HealthPort, RecordingSettings


class ThinkerSettings(RecordingSettings):
    """Run a thinker: load its factory, give it queues on the broker, exit with its outcome."""

    thinker_factory: str = Field(
        description="Import path of a function that takes the queues and returns a BaseThinker, "
        "'package.module:NAME' or 'file.py:NAME'"
    )
    client_id: str = Field(
        default="thinker",
        description="Stable name of this thinker: a restarted thinker with the same ID receives "
        "the results that arrived while it was away",
    )
    topics: str = Field(default="", description="Topics the thinker uses, comma-separated")
    kill_on_exit: bool = Field(
        default=False, description="Send the kill signal to the task servers when the thinker ends"
    )
    health_host: HealthHost = "0.0.0.0"
    health_port: HealthPort = 0
    stop_grace: float = Field(
        default=3.0,
        ge=0,
        description="Seconds the agents get to wind down after SIGTERM or SIGINT before the "
        "thinker leaves (results it has not read stay in the broker)",
    )

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        return check_name(value, "the client ID")

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: str) -> str:
        for topic in cls.split(value):
            check_name(topic, "each topic")
        return value

    @staticmethod
    def split(topics: str) -> list[str]:
        """The topics as a list."""
        return [topic.strip() for topic in topics.split(",") if topic.strip()]

    @property
    def topic_list(self) -> list[str]:
        """The topics as a list."""
        return self.split(self.topics)
