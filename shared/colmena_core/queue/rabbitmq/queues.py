"""RabbitMQQueues: the Colmena queue API over a RabbitMQ broker.

The object is the picklable *factory*: settings only. In each process that uses it, it
attaches a client role (:mod:`.client`) and, once it serves tasks, a server role
(:mod:`.server`) to the process's one broker connection (:mod:`.bridge`), as a session
(:mod:`.session`). It must not talk to pika itself.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Collection
from multiprocessing import util as mp_util

from colmena_core.exceptions import MessageDecodeError
from colmena_core.models import Result, SerializationMethod
from colmena_core.queue.base import ColmenaQueues, QueueRole
from colmena_core.queue.rabbitmq import session as sessions
from colmena_core.queue.rabbitmq.admin import DeadLetter, list_dead_letters, queue_depths
from colmena_core.queue.rabbitmq.client import ClientSettings
from colmena_core.queue.rabbitmq.names import CampaignNames, check_name
from colmena_core.queue.rabbitmq.roles import Delivery
from colmena_core.queue.rabbitmq.sender import ResultSender
from colmena_core.queue.rabbitmq.server import ServerSettings
from colmena_core.queue.rabbitmq.session import Session, Settings
from colmena_core.queue.rabbitmq.topology import DEFAULT_DELIVERY_LIMIT

__all__ = ["BROKER_URL_VARIABLE", "DEFAULT_BROKER_URL", "RabbitMQQueues"]

BROKER_URL_VARIABLE = "COLMENA_BROKER_URL"
"""Environment variable read for the broker URL when none is given."""

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
"""Broker used when neither an argument nor the environment names one."""


class RabbitMQQueues(ColmenaQueues):
    """Queues on a RabbitMQ broker, shared by the thinkers and task servers of a campaign.

    Requests are routed by method, so a task server takes only the methods it serves and
    several task servers serving one method share its work; results go back to the client
    (thinker) that sent the task, by ``client_id`` and topic. The object connects on first
    use, so it can be pickled into another process, which connects on its own; it is safe
    to use from many threads, and every queue object of a process shares the process's one
    connection to the broker. See the package documentation for the delivery guarantees.

    Args:
        topics: Names of topics that are known for this queue
        url: Broker URL, ``amqp://user:password@host:port/vhost``; defaults to the
            ``COLMENA_BROKER_URL`` environment variable, else ``amqp://localhost``
        campaign: Name of the campaign; campaigns sharing a broker are isolated
        client_id: Stable name of this client. Results are kept for it while it is away:
            a thinker that may restart must pass the same ``client_id`` each time (the
            default is a new random one)
        methods: Method names of the campaign. A client declares their request queues
            up front, so requests sent before any task server starts wait there; a task
            server serves these unless it declares its own (see :meth:`prepare_server`)
        serialization_method: Method used to serialize task inputs and results
        keep_inputs: Whether to return task inputs with the result object
        proxystore_name: Name of a registered ProxyStore store, or a mapping of topic to name
        proxystore_threshold: Size in bytes above which objects travel by proxy, or a
            mapping of topic to threshold
        prefetch: Requests a task server holds at once (set it to the capacity of its
            workers), and results a client buffers per topic
        heartbeat: AMQP heartbeat in seconds (``None``: the broker's proposal)
        delivery_limit: Deliveries of a request before the broker dead-letters it (a task
            that keeps killing its task servers); every process of a campaign should use
            the same value
        lease_after: Seconds a task server holds a request unacknowledged before moving it
            to a lease; must be below the broker's ``consumer_timeout`` (30 min by default)
        lease_ttl: Seconds a lease lasts without renewal: a long task of a crashed task
            server returns to its queue about twice this long after the crash
        connect_timeout: Seconds to wait for the first connection before raising
        publish_timeout: Seconds a sender waits for room among unconfirmed messages
        max_pending: Messages that may wait for a broker confirmation at once
        max_pending_bytes: Bytes that may wait for a broker confirmation at once
        max_message_size: Largest message, in bytes: RabbitMQ's ``max_message_size``
            (128 MiB unless the broker is configured otherwise). The broker closes the
            channel of a publisher that exceeds it, so larger tasks are refused before they
            are sent (see :attr:`ColmenaQueues.max_message_size`). Should the broker's limit
            be lower, the connection learns it from the first refusal, and each task above
            it gets a failure result
        secret: Campaign secret that signs the messages (default: ``COLMENA_CAMPAIGN_SECRET``
            or the file named by ``COLMENA_CAMPAIGN_SECRET_FILE``; none: unsigned). Requests,
            results and kill signals unsigned or signed with another secret are
            dead-lettered (or dropped) with the reason, before anything in them is parsed
        stall_timeout: Seconds without progress (no connection, no confirmation while
            messages wait for one, results waiting to be sent) after which
            :attr:`stalled_reason` says what is stuck
        ledger: Keep a ledger on the broker of this client's confirmed requests and
            processed results (two small messages per task), so that a thinker restarted
            with the same ``client_id`` can ask which of its tasks are in flight
            (:meth:`in_flight`)

    The connection settings (``heartbeat``, ``connect_timeout``, ``max_pending``,
    ``max_pending_bytes``) are those of the first queue object of a process to connect to
    a broker: the others share its connection.
    """

    _LOCAL_STATE = (
        *ColmenaQueues._LOCAL_STATE,
        "_session",
        "_session_pid",
        "_unacknowledged",
        "_unacknowledged_lock",
    )

    def __init__(
        self,
        topics: Collection[str] = (),
        url: str | None = None,
        campaign: str = "default",
        client_id: str | None = None,
        methods: Collection[str] | None = None,
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        proxystore_name: str | dict[str, str] | None = None,
        proxystore_threshold: int | dict[str, int] | None = None,
        prefetch: int = 64,
        heartbeat: int | None = 60,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        lease_after: float = 600.0,
        lease_ttl: float = 300.0,
        connect_timeout: float = 30.0,
        publish_timeout: float = 300.0,
        max_pending: int = 1000,
        max_pending_bytes: int = 256 * 2**20,
        max_message_size: int | None = 128 * 2**20,
        secret: str | bytes | None = None,
        stall_timeout: float = 300.0,
        ledger: bool = False,
    ) -> None:
        super().__init__(
            topics, serialization_method, keep_inputs, proxystore_name, proxystore_threshold
        )
        self._use_secret(secret)
        if not stall_timeout > 0:
            raise ValueError("stall_timeout must be positive")
        self.stall_timeout = stall_timeout
        if isinstance(methods, str):
            raise ValueError("methods must be a collection of names, not a single string")
        if prefetch < 1 or delivery_limit < 1 or max_pending < 1:
            raise ValueError("prefetch, delivery_limit and max_pending must be at least 1")
        if lease_after <= 0 or lease_ttl <= 0:
            raise ValueError("lease_after and lease_ttl must be positive")
        names = CampaignNames(campaign)
        client_id = check_name(client_id or uuid.uuid4().hex, "A client_id")
        for method in methods or ():
            names.request_queue(method)
        for topic in self.topics:
            names.result_queue(client_id, topic)
        self._settings = Settings(
            url=url or os.environ.get(BROKER_URL_VARIABLE) or DEFAULT_BROKER_URL,
            client=ClientSettings(
                names=names,
                client_id=client_id,
                topics=tuple(sorted(self.topics)),
                methods=None if methods is None else tuple(sorted(set(methods))),
                prefetch=prefetch,
                delivery_limit=delivery_limit,
                lease_after=lease_after,
                publish_timeout=publish_timeout,
                ledger=ledger,
            ),
            server=ServerSettings(
                names=names,
                client_id=client_id,
                prefetch=prefetch,
                delivery_limit=delivery_limit,
                lease_after=lease_after,
                lease_ttl=lease_ttl,
                publish_timeout=publish_timeout,
            ),
            heartbeat=heartbeat,
            connect_timeout=connect_timeout,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        self._served: frozenset[str] | None = None if methods is None else frozenset(methods)
        self.max_message_size = max_message_size

    def _init_local_state(self) -> None:
        super()._init_local_state()
        # Results handed over and not acknowledged yet (by id: results are not hashable)
        self._unacknowledged: dict[int, tuple[Result, Delivery]] = {}
        self._unacknowledged_lock = threading.Lock()
        self._session: Session | None = None
        self._session_pid = os.getpid()

    # ------------------------------------------------------------- facts
    @property
    def url(self) -> str:
        """URL of the broker."""
        return self._settings.url

    @property
    def campaign(self) -> str:
        """Name of the campaign."""
        return self._settings.client.names.campaign

    @property
    def client_id(self) -> str:
        """Name of this client, which its results are addressed to."""
        return self._settings.client.client_id

    @property
    def names(self) -> CampaignNames:
        """Names of the campaign's exchanges and queues."""
        return self._settings.client.names

    @property
    def is_connected(self) -> bool:
        """Whether this object is connected to the broker now, in this process."""
        session = self._session if self._session_pid == os.getpid() else None
        return (
            session is not None and session.connection.connected and session.client.ready.is_set()
        )

    @property
    def server_id(self) -> str | None:
        """ID of this object's task-server side in this process, which names its private
        queues (control, leases); ``None`` until it has one."""
        session = self._session if self._session_pid == os.getpid() else None
        server = None if session is None else session.server
        return None if server is None else server.server_id

    @property
    def stalled_reason(self) -> str | None:
        """What has made no progress for over ``stall_timeout`` seconds in this process (no
        broker connection, publishing, results waiting to be sent); ``None`` if nothing.

        Services report it on their readiness endpoint.
        """
        session = self._session if self._session_pid == os.getpid() else None
        if session is None:
            return None
        reason = session.connection.stalled_reason(self.stall_timeout)
        sender = session.sender
        if reason is None and sender is not None and sender.waited() > self.stall_timeout:
            reason = f"{sender.pending} results have waited {sender.waited():.0f} s to be sent"
        return reason

    def health(self) -> dict[str, object]:
        """Connection, pending confirmations and any stall, for health endpoints."""
        session = self._session if self._session_pid == os.getpid() else None
        return {
            "broker_connected": self.is_connected,
            "unconfirmed": 0 if session is None else session.connection.link.pending,
            "stalled_reason": self.stalled_reason,
        }

    # ------------------------------------------------------ connection
    def _get_session(self) -> Session:
        if self._session_pid != os.getpid():  # a forked copy: the parent's thread is not here
            self._session, self._session_pid = None, os.getpid()
        session = self._session
        if session is not None:
            return session
        with sessions.SESSION_LOCK:
            if self._session is None:
                session = Session(self)
                mp_util.Finalize(self, session.shutdown, args=(10.0,), exitpriority=10)
                self._session = session
                if self.role is not QueueRole.CLIENT:
                    session.server_role()  # its control queue hears a kill signal sent early
            return self._session

    def connect(self, timeout: float | None = None) -> None:
        """Connect to the broker now rather than on first use.

        Raises:
            BrokerConnectionError: no connection within ``timeout`` (default: ``connect_timeout``)
        """
        session = self._get_session()
        session.connection.wait_ready(session.client, timeout)

    def disconnect(self, timeout: float = 30.0) -> None:
        """Wait until the broker confirmed every message sent, then leave the connection.

        The object stays usable: it connects again on next use. A task server gives back
        the requests it has not started.
        """
        if self._session_pid != os.getpid():
            self._session, self._session_pid = None, os.getpid()
        session, self._session = self._session, None
        if session is not None:
            session.shutdown(timeout)

    close = disconnect

    def set_role(self, role: QueueRole | str) -> None:
        """Define the role of this queue (a server has no result queues of its own)."""
        super().set_role(role)
        session = self._session if self._session_pid == os.getpid() else None
        if session is not None:
            session.client.serves_only = self.role is QueueRole.SERVER

    def prepare_server(self, method_names: Collection[str]) -> None:
        """Serve the requests of these methods (called by the task server before its first task)."""
        for method in method_names:
            self.names.request_queue(method)
        self._served = frozenset(method_names)
        session = self._session if self._session_pid == os.getpid() else None
        if session is not None:
            session.served = self._served
            if session.server is not None:
                session.server.set_served(self._served)

    # ------------------------------------------------------- transport
    def _send_request(
        self, message: bytes, method: str | None, topic: str, task_id: str = ""
    ) -> None:
        self._get_session().client.send_request(task_id, message, method)

    def _wait_confirmed(self, task_id: str | None, timeout: float | None) -> bool:
        session = self._session if self._session_pid == os.getpid() else None
        return session is None or session.client.wait_confirmed(task_id, timeout)

    def _reply_address(self) -> str | None:
        return self.client_id

    @property
    def reply_scope(self) -> str:
        """Results are addressed to the client ID."""
        return self.client_id

    def _get_request(self, timeout: float | None) -> Result:
        return self._get_session().server_role().take_request(timeout)

    def _hand_over_result(self, result: Result) -> None:
        session = self._get_session()
        server = session.server_role()
        with session.lock:
            if session.sender is None:
                session.sender = ResultSender(self._encode_result, server.publish_result)
            sender = session.sender
        sender.put(result)

    def _send_result(self, message: bytes, result: Result) -> None:
        self._get_session().server_role().publish_result(result, message)

    def _get_result(self, topic: str, timeout: float | None) -> Result:
        client = self._get_session().client
        item = client.take_result(topic, timeout)
        if isinstance(item, Result):
            return item  # a failure made here: the broker refused the request
        try:
            result = self.decode_result(item.body)
        except MessageDecodeError as error:
            client.reject(item, error)
            raise
        with self._unacknowledged_lock:
            self._unacknowledged[id(result)] = (result, item)
        return result

    def _acknowledge(self, result: Result) -> None:
        with self._unacknowledged_lock:
            held = self._unacknowledged.pop(id(result), None)
        session = self._session if self._session_pid == os.getpid() else None
        if held is not None and session is not None:
            session.client.ack(held[1])
            if result.complete is not False:
                session.client.processed(result.task_id)

    def _send_kill_signal(self) -> None:
        self._get_session().client.send_kill_signal(self.kill_message())

    def flush(self) -> None:
        """Remove the requests waiting for this object's methods and its client's results.

        Request queues are shared by the clients of a campaign: flushing them removes the
        requests of every client.
        """
        session = self._get_session()
        names = self.names
        queues = [names.result_queue(self.client_id, topic) for topic in sorted(self.topics)]
        queues += [names.request_queue(m) for m in sorted(self._served or ())]
        queues.append(names.unrouted_queue)
        if session.sender is not None:  # results handed over before are flushed too
            session.sender.wait_idle(self._settings.client.publish_timeout)
        session.client.flush(queues)
        if session.server is not None:
            session.connection.run(session.server.flush(), self._settings.client.publish_timeout)

    def in_flight(self, timeout: float = 30.0) -> set[str]:
        """IDs of this client's tasks whose requests the broker confirmed and whose final
        results were not processed (acknowledged) yet, by this process or an earlier one
        with the same ``client_id``: what a restarted thinker still waits for.

        Needs ``ledger=True``. Results of these tasks that already wait in the result
        queues come with the next :meth:`get_result` calls.

        Raises:
            ValueError: the queues keep no ledger
        """
        return self._get_session().client.in_flight(timeout)

    # -------------------------------------------------------- status
    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in the queues this object knows, by queue name."""
        return queue_depths(
            self.url,
            self.campaign,
            methods=sorted(self._served or ()),
            clients={self.client_id: sorted(self.topics)},
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The campaign's dead letters (left in place), oldest first."""
        return list_dead_letters(self.url, self.campaign, limit=limit)
