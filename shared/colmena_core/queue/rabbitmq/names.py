"""Names of a campaign on the broker.

Every exchange, queue and routing key of a campaign is built here, from names that follow
the project's one name rule (:mod:`colmena_core.names`, which the services' settings and
the Helm chart's schema apply too): a name that passes the settings also works on the
broker, and every name built here fits AMQP's 255-byte short strings. This module must not
talk to the broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from colmena_core.names import AMQP_SHORT_STRING_LIMIT, check_method, check_name

__all__ = [
    "AMQP_SHORT_STRING_LIMIT",
    "CampaignNames",
    "check_method",
    "check_name",
    "escape_word",
    "unescape_word",
]


def escape_word(text: str) -> str:
    """Make ``text`` one word of a topic routing key (no dots or wildcards)."""
    return text.replace("%", "%25").replace(".", "%2E").replace("*", "%2A").replace("#", "%23")


def unescape_word(word: str) -> str:
    """Inverse of :func:`escape_word`."""
    return word.replace("%2E", ".").replace("%2A", "*").replace("%23", "#").replace("%25", "%")


@dataclass(frozen=True)
class CampaignNames:
    """Names of the exchanges and queues of one campaign on the broker.

    Args:
        campaign: Name of the campaign (see :func:`check_name`)
    """

    campaign: str

    def __post_init__(self) -> None:
        check_name(self.campaign, "A campaign name")

    @property
    def prefix(self) -> str:
        """Prefix of every name of the campaign."""
        return f"colmena.{self.campaign}"

    @property
    def requests_exchange(self) -> str:
        """Direct exchange of the requests (routing key: method name)."""
        return f"{self.prefix}.requests"

    @property
    def unrouted_exchange(self) -> str:
        """Alternate exchange of the requests exchange: requests no method queue took."""
        return f"{self.prefix}.unrouted"

    @property
    def unrouted_queue(self) -> str:
        """Queue of the requests that no method queue took."""
        return f"{self.prefix}.unrouted"

    @property
    def results_exchange(self) -> str:
        """Topic exchange of the results (routing key: ``<client_id>.<topic>``)."""
        return f"{self.prefix}.results"

    @property
    def control_exchange(self) -> str:
        """Fanout exchange of the kill signal."""
        return f"{self.prefix}.control"

    @property
    def heartbeats_exchange(self) -> str:
        """Fanout exchange of the task servers' heartbeats (see :mod:`.monitor`)."""
        return f"{self.prefix}.heartbeats"

    @property
    def dead_exchange(self) -> str:
        """Fanout exchange of dead letters."""
        return f"{self.prefix}.dead"

    @property
    def dead_letter_queue(self) -> str:
        """Queue keeping the dead letters until someone removes them."""
        return f"{self.prefix}.dead-letters"

    @property
    def leases_exchange(self) -> str:
        """Headers exchange of the leases of long-running tasks."""
        return f"{self.prefix}.leases"

    @property
    def expired_leases_exchange(self) -> str:
        """Headers exchange of the leases that were not renewed in time."""
        return f"{self.prefix}.leases.expired"

    @property
    def exchanges(self) -> list[str]:
        """Every exchange of the campaign."""
        return [
            self.requests_exchange,
            self.unrouted_exchange,
            self.results_exchange,
            self.control_exchange,
            self.heartbeats_exchange,
            self.dead_exchange,
            self.leases_exchange,
            self.expired_leases_exchange,
        ]

    def request_queue(self, method: str) -> str:
        """Queue of the requests for ``method``.

        Raises:
            ValueError: the method name breaks :data:`colmena_core.names.METHOD_PATTERN`
        """
        check_method(method, "A method name")
        return self._checked(f"{self.prefix}.requests.{method}")

    def result_routing_key(self, client_id: str, topic: str) -> str:
        """Routing key of the results of ``topic`` for ``client_id``."""
        return self._checked(f"{escape_word(client_id)}.{escape_word(topic)}")

    def result_queue(self, client_id: str, topic: str) -> str:
        """Queue of the results of ``topic`` for ``client_id``."""
        return self._checked(f"{self.prefix}.results.{self.result_routing_key(client_id, topic)}")

    def shared_queues(
        self, methods: Iterable[str] = (), clients: Mapping[str, Iterable[str]] | None = None
    ) -> list[str]:
        """The campaign's queues that outlive their users: unrouted requests, dead letters,
        the request queues of ``methods`` and the result queues of ``clients`` (client ID
        to topics). The broker cannot list queues over AMQP, so they are named here."""
        queues = [self.unrouted_queue, self.dead_letter_queue]
        queues += [self.request_queue(m) for m in methods]
        for client, topics in (clients or {}).items():
            queues += [self.result_queue(client, t) for t in topics]
        return queues

    def ledger_queue(self, client_id: str) -> str:
        """Queue where a client records its confirmed requests and processed results."""
        return self._checked(f"{self.prefix}.ledger.{client_id}")

    def control_queue(self, server_id: str) -> str:
        """Queue where one task server receives the kill signal."""
        return f"{self.prefix}.control.{server_id}"

    def lease_queue(self, server_id: str) -> str:
        """Queue holding the leases of the long tasks of one task server."""
        return f"{self.prefix}.leases.{server_id}"

    def expired_lease_queue(self, server_id: str) -> str:
        """Queue where one task server renews or drops its expired leases."""
        return f"{self.prefix}.leases-expired.{server_id}"

    def monitor_queue(self, monitor_id: str) -> str:
        """Private queue of one campaign monitor (heartbeats and copies of results)."""
        return f"{self.prefix}.monitor.{monitor_id}"

    @staticmethod
    def _checked(name: str) -> str:
        if len(name.encode()) > AMQP_SHORT_STRING_LIMIT:
            raise ValueError(f"Name longer than the 255 bytes AMQP allows: {name!r}")
        return name
