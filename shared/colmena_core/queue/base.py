"""The queue interface between thinkers (clients) and task servers.

:class:`ColmenaQueues` holds everything that is the same for every transport: topics,
roles, serialization and ProxyStore settings, bookkeeping of tasks in flight, and
de-duplication of results. A transport subclass moves opaque bytes (see
:mod:`colmena_core.models.wire`) and implements six small methods. This module must not
know about any particular transport.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Collection
from enum import StrEnum
from typing import Any

from proxystore.store.utils import get_key

from colmena_core.exceptions import (
    BrokerConnectionError,
    MessageAuthenticationError,
    MessageDecodeError,
    MessageTooLargeError,
    TimeoutException,
    TransportError,
)
from colmena_core.models import ResourceRequirements, Result, SerializationMethod
from colmena_core.models.results import MAX_RETRIES
from colmena_core.models.wire import decode_result, encode_kill, encode_result
from colmena_core.names import check_method, check_name
from colmena_core.proxy import get_store
from colmena_core.security import MessageSigner, load_secret

__all__ = ["ColmenaQueues", "QueueRole"]

logger = logging.getLogger(__name__)

_SEEN_RESULTS_KEPT = 100_000
"""How many received task IDs a client remembers to drop duplicate deliveries."""


class QueueRole(StrEnum):
    """Role a queue is used for."""

    ANY = "any"
    SERVER = "server"
    CLIENT = "client"


def _per_topic(
    value: Any, topics: Collection[str], kind: type | tuple[type, ...], name: str
) -> dict[str, Any]:
    if value is None:
        return dict.fromkeys(topics)
    if isinstance(value, dict):
        unknown = set(value) - set(topics)
        if unknown:
            raise ValueError(f"{name} names topics that are not in the queue: {sorted(unknown)}")
        return {topic: value.get(topic) for topic in topics}
    if isinstance(value, kind) and not isinstance(value, bool):
        return dict.fromkeys(topics, value)
    raise ValueError(f"Unexpected type {type(value).__name__} for {name}")


class ColmenaQueues(ABC):
    """Base class for the queues between a thinker and its task servers.

    Follows the get and put semantics of most queues, plus "topics" that separate the
    results meant for different agents.

    Args:
        topics: Names of topics that are known for this queue (``default`` is always added)
        serialization_method: Method used to serialize task inputs and results
        keep_inputs: Whether to return task inputs with the result object
        proxystore_name: Name of a registered ProxyStore store for all topics, or a mapping
            of topic to store name (topics left out do not use ProxyStore)
        proxystore_threshold: Size in bytes above which objects travel by proxy, for all
            topics or per topic (``None`` disables ProxyStore for that topic)
    """

    signer: MessageSigner | None = None
    """Signs every message with the campaign secret and checks the signature of every message
    received (``None``: messages are not signed). Transports over a network set it from
    their ``secret`` argument or the environment (see :mod:`colmena_core.security`)."""

    max_message_size: int | None = None
    """Largest encoded message the transport carries, in bytes (``None``: no limit).

    A larger task is refused by :meth:`send_inputs` with :class:`MessageTooLargeError`; a
    larger result goes back as a failure that names the error. Set per object to match a
    broker configured otherwise.
    """

    def __init__(
        self,
        topics: Collection[str] = (),
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        proxystore_name: str | dict[str, str] | None = None,
        proxystore_threshold: int | dict[str, int] | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise ValueError("topics must be a collection of names, not a single string")
        for topic in topics:
            check_name(topic, "A topic")
        self.topics: set[str] = set(topics) | {"default"}
        self.serialization_method = SerializationMethod(serialization_method)
        self.keep_inputs = keep_inputs
        self.role = QueueRole.ANY
        self.proxystore_name: dict[str, str | None] = _per_topic(
            proxystore_name, self.topics, str, "proxystore_name"
        )
        self.proxystore_threshold: dict[str, int | None] = _per_topic(
            proxystore_threshold, self.topics, int, "proxystore_threshold"
        )
        for name in {n for n in self.proxystore_name.values() if n is not None}:
            if get_store(name) is None:
                raise ValueError(
                    f"ProxyStore store {name!r} is not registered: create it with "
                    "Store(name, connector, register=True) before creating the queues"
                )
        self._init_local_state()

    # ------------------------------------------------------------------ state
    def _init_local_state(self) -> None:
        """Create the per-process state: locks, events, bookkeeping (never pickled)."""
        self._active_lock = threading.Lock()
        self._active_tasks: dict[str, str] = {}
        self._all_complete = threading.Event()
        self._all_complete.set()
        self._seen_results: OrderedDict[str, None] = OrderedDict()
        self._input_proxies: dict[str, tuple[str, list[Any]]] = {}

    _LOCAL_STATE: tuple[str, ...] = (
        "_active_lock",
        "_active_tasks",
        "_all_complete",
        "_seen_results",
        "_input_proxies",
    )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._LOCAL_STATE:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local_state()

    def _use_secret(self, secret: str | bytes | None) -> None:
        """Sign messages with ``secret``, or the campaign secret of the environment."""
        loaded = load_secret(secret)
        self.signer = None if loaded is None else MessageSigner(loaded)
        if self.signer is None:
            logger.warning(
                "%s without a campaign secret: messages are not signed, so anyone who can "
                "publish on the transport can run code here (set COLMENA_CAMPAIGN_SECRET)",
                type(self).__name__,
            )

    @property
    def reply_scope(self) -> str:
        """Name of the client its results come back to (part of each request's reply tag)."""
        return ""

    # ------------------------------------------------------------------ roles
    def set_role(self, role: QueueRole | str) -> None:
        """Define the role of this queue.

        Users are warned away from actions their role does not allow, such as sending
        results from a client or issuing requests from a server.
        """
        self.role = QueueRole(role)

    def prepare_server(self, method_names: Collection[str]) -> None:  # noqa: B027 - optional hook
        """Learn which methods the task server using these queues runs.

        Task servers call it before reading their first task. Transports that route
        requests by method (RabbitMQ) then take only the requests of these methods; the
        others ignore it.
        """

    def _check_role(self, allowed_role: QueueRole, calling_function: str) -> None:
        if self.role is not QueueRole.ANY and self.role is not allowed_role:
            warnings.warn(
                f"{calling_function} is intended for a {allowed_role.value}, not a {self.role.value}",
                stacklevel=3,
            )

    def _check_topic(self, topic: str) -> None:
        if topic not in self.topics:
            raise ValueError(f"Unknown topic {topic!r}; the queue knows {sorted(self.topics)}")

    # ----------------------------------------------------------- bookkeeping
    @property
    def active_count(self) -> int:
        """Number of tasks sent by this client whose result has not been received yet."""
        with self._active_lock:
            return len(self._active_tasks)

    def active_count_for(self, topic: str) -> int:
        """Number of tasks in flight for one topic."""
        with self._active_lock:
            return sum(1 for t in self._active_tasks.values() if t == topic)

    def wait_until_done(self, timeout: float | None = None) -> bool:
        """Wait until all out-going tasks have completed.

        Returns:
            Whether every task completed within the timeout
        """
        self._check_role(QueueRole.CLIENT, "wait_until_done")
        return self._all_complete.wait(timeout=timeout)

    def _mark_sent(self, task_id: str, topic: str) -> None:
        with self._active_lock:
            self._active_tasks[task_id] = topic
            self._all_complete.clear()

    def _mark_received(self, task_id: str) -> bool:
        """Record a delivered result; return False when it is a duplicate."""
        with self._active_lock:
            if task_id in self._seen_results:
                return False
            self._seen_results[task_id] = None
            if len(self._seen_results) > _SEEN_RESULTS_KEPT:
                self._seen_results.popitem(last=False)
            self._active_tasks.pop(task_id, None)
            if not self._active_tasks:
                self._all_complete.set()
            return True

    # ----------------------------------------------------------------- client
    def send_inputs(
        self,
        *input_args: Any,
        method: str | None = None,
        input_kwargs: dict[str, Any] | None = None,
        keep_inputs: bool | None = None,
        resources: ResourceRequirements | dict[str, Any] | None = None,
        topic: str = "default",
        task_info: dict[str, Any] | None = None,
        max_retries: int = 0,
        wait_confirmed: float | None = None,
    ) -> str:
        """Send a task request.

        On transports that confirm messages asynchronously (RabbitMQ), the request may still
        be on its way to the broker when this returns: pass ``wait_confirmed`` to return
        only once the broker holds it, or call :meth:`wait_until_confirmed` after sending
        many. A thinker that stops without either may lose the requests not yet confirmed.

        Args:
            *input_args: Positional arguments to the function
            method: Name of the method to run (may be omitted when the server has one method)
            input_kwargs: Keyword arguments for the function
            keep_inputs: Whether to send the inputs back with the result (overrides the
                queue's default)
            topic: Topic of the task, which sets the topic of its result
            resources: Suggestions for how many resources to use for the task
            task_info: Any information used for task tracking, returned with the result
            max_retries: Re-run the task up to this many times if it fails
            wait_confirmed: Seconds to wait until the transport confirms that it holds the
                request (``None``: do not wait)
        Returns:
            Task ID
        Raises:
            ValueError: a value breaks a limit (the message names the field and the limit)
            MessageTooLargeError: the task is larger than the transport carries
            TransportError: the request was refused, or not confirmed within
                ``wait_confirmed`` seconds (it may still arrive; its result would follow)
        """
        self._check_role(QueueRole.CLIENT, "send_inputs")
        self._check_topic(topic)
        if method is not None:
            check_method(method)
        if isinstance(max_retries, bool) or not 0 <= max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be between 0 and {MAX_RETRIES}, not {max_retries}")
        if isinstance(resources, dict):
            resources = ResourceRequirements(**resources)
        store_name = self.proxystore_name[topic]
        threshold = self.proxystore_threshold[topic]
        store_config: dict[str, Any] | None = None
        if store_name is not None and threshold is not None:
            store = get_store(store_name)
            if store is None:
                raise ValueError(
                    f"ProxyStore store {store_name!r} is not registered in this process"
                )
            store_config = store.config().model_dump()
        else:
            store_name = threshold = None

        result = Result(
            (input_args, input_kwargs or {}),
            method=method,
            topic=topic,
            reply_to=self._reply_address(),
            keep_inputs=self.keep_inputs if keep_inputs is None else keep_inputs,
            serialization_method=self.serialization_method,
            task_info=task_info or {},
            resources=resources or ResourceRequirements(),
            max_retries=max_retries,
            proxystore_name=store_name,
            proxystore_threshold=threshold,
            proxystore_config=store_config,
        )
        if self.signer is not None:
            result.reply_tag = self.signer.reply_tag(self.reply_scope, result.task_id)
        result.time_serialize_inputs, proxies = result.serialize()
        message = encode_result(result, self.signer)
        too_large = self._too_large(message, f"The request of task {result.task_id}")
        if too_large is not None:
            if proxies and store_name is not None:  # nothing will read them
                self._evict_inputs(result.task_id, store_name, [get_key(p) for p in proxies])
            raise too_large
        self._mark_sent(result.task_id, topic)
        if proxies and store_name is not None:
            # Kept until the result arrives: a task run again must still find its inputs
            with self._active_lock:
                self._input_proxies[result.task_id] = (store_name, [get_key(p) for p in proxies])
        try:
            self._send_request(message, method, topic, task_id=result.task_id)
        except BaseException:
            with self._active_lock:
                self._active_tasks.pop(result.task_id, None)
                if not self._active_tasks:
                    self._all_complete.set()
            raise
        if wait_confirmed is not None:
            try:
                confirmed = self._wait_confirmed(result.task_id, wait_confirmed)
            except TransportError:  # refused: no result will come but this error
                self._mark_received(result.task_id)
                raise
            if not confirmed:
                raise BrokerConnectionError(
                    f"The request of task {result.task_id} was not confirmed within "
                    f"{wait_confirmed} s; it may still arrive"
                )
        logger.debug("Client sent a %s task with topic %s", method, topic)
        return result.task_id

    def wait_until_confirmed(self, timeout: float | None = None) -> bool:
        """Wait until the transport confirmed every request sent so far (see
        :meth:`send_inputs`): once it returns ``True``, a thinker may stop without losing
        any of them.

        Returns:
            Whether they were all confirmed (or refused, each with a failure result) within
            ``timeout`` seconds
        """
        self._check_role(QueueRole.CLIENT, "wait_until_confirmed")
        return self._wait_confirmed(None, timeout)

    def get_result(
        self, topic: str = "default", timeout: float | None = None, acknowledge: bool = True
    ) -> Result | None:
        """Get a result: the outcome of a task, or an intermediate result of a running one.

        Intermediate results (``complete`` false) come before the final result of their
        task; only the final one counts the task as done.

        Args:
            topic: Which topic of task to wait for
            timeout: Seconds to wait (fractions honoured); ``None`` waits forever
            acknowledge: Tell the transport the result is taken care of now. With
                ``False``, call :meth:`acknowledge_result` once it is processed: on
                transports that keep results for a client (RabbitMQ), a thinker that stops
                before gets it again when it restarts with the same ``client_id``
        Returns:
            Result from a computation
        Raises:
            TimeoutException: if no result arrived within the timeout
        """
        self._check_role(QueueRole.CLIENT, "get_result")
        self._check_topic(topic)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = self._get_result(topic, remaining)
            except MessageDecodeError as exc:
                logger.warning("Dropped a result message on topic %s: %s", topic, exc)
                continue
            # An intermediate result: its task still runs, and more results will follow
            intermediate = result.complete is False
            if not intermediate and not self._mark_received(result.task_id):
                logger.info("Dropped a duplicate delivery of the result of task %s", result.task_id)
                self._acknowledge(result)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutException(f"No new result on topic {topic!r} within {timeout} s")
                continue
            if not intermediate:
                self._release_input_proxies(result)
            result.time_deserialize_results = result.deserialize()
            result.mark_result_received()
            if acknowledge:
                self._acknowledge(result)
            logger.debug("Client received a %s result with topic %s", result.method, topic)
            return result

    def acknowledge_result(self, result: Result) -> None:
        """Tell the transport that a result taken with ``get_result(acknowledge=False)`` is
        processed: it will not be delivered again (idempotent)."""
        self._acknowledge(result)

    def _acknowledge(self, result: Result) -> None:  # noqa: B027 - optional hook
        """Let the transport forget the delivery of ``result`` (transports that keep results
        until they are acknowledged override it)."""

    def decode_result(self, message: bytes | bytearray | memoryview) -> Result:
        """Decode a result addressed to this client, its payloads still serialized.

        The signature is checked first, then that the message is a result (not a request)
        and, with a secret, that it carries the reply tag of a task this client sent.

        Raises:
            MessageAuthenticationError: unsigned, badly signed, or for a task not sent here
            MessageDecodeError: not a valid result message
        """
        result = decode_result(message, self.signer)
        if result.success is None:
            raise MessageDecodeError(f"The message of task {result.task_id} is not a result")
        if self.signer is not None and result.reply_tag != self.signer.reply_tag(
            self.reply_scope, result.task_id
        ):
            raise MessageAuthenticationError(
                f"The result of task {result.task_id} is not for a task this client sent"
            )
        return result

    def decode_request(self, message: bytes | bytearray | memoryview) -> Result:
        """Decode a task request, checking its signature first (payloads stay serialized).

        Raises:
            MessageAuthenticationError: unsigned or badly signed
            MessageDecodeError: not a valid request message
        """
        task = decode_result(message, self.signer)
        if task.success is not None:
            raise MessageDecodeError(f"The message of task {task.task_id} is not a request")
        return task

    def _release_input_proxies(self, result: Result) -> None:
        """Evict the proxied inputs of a finished task, unless the result hands them back."""
        with self._active_lock:
            entry = self._input_proxies.pop(result.task_id, None)
        if entry is None or result.keep_inputs:
            return
        self._evict_inputs(result.task_id, *entry)

    def _evict_inputs(self, task_id: str, store_name: str, keys: list[Any]) -> None:
        store = get_store(store_name)
        if store is None:
            return
        for key in keys:
            try:
                store.evict(key)
            except Exception:
                logger.warning("Could not evict an input of task %s", task_id, exc_info=True)

    def kill_message(self) -> bytes:
        """The kill signal as a message, signed like the others."""
        return encode_kill(self.signer)

    def send_kill_signal(self) -> None:
        """Tell the task servers to finish their in-flight tasks and stop."""
        self._check_role(QueueRole.CLIENT, "send_kill_signal")
        self._send_kill_signal()

    # ----------------------------------------------------------------- server
    def get_task(self, timeout: float | None = None) -> tuple[str, Result]:
        """Get a task request.

        Args:
            timeout: Seconds to wait (fractions honoured); ``None`` waits forever
        Returns:
            - Topic of the task, which selects the queue for its result
            - Task description, its inputs still serialized
        Raises:
            TimeoutException: If the timeout on the queue is reached
            KillSignalException: If the queue receives a kill signal
        """
        self._check_role(QueueRole.SERVER, "get_task")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                task = self._get_request(remaining)
            except MessageDecodeError as exc:
                logger.warning("Dropped a task request: %s", exc)
                continue
            task.mark_input_received()
            return task.topic, task

    def send_result(self, result: Result, topic: str | None = None) -> None:
        """Send a result back to the client that requested it.

        Args:
            result: Result object to communicate back
            topic: Topic of the task (defaults to the one recorded in the result)
        """
        self._check_role(QueueRole.SERVER, "send_result")
        if topic is not None:
            result.topic = topic
        self._hand_over_result(result)

    def _hand_over_result(self, result: Result) -> None:
        """Encode and send a result now; transports with a sender thread of their own hand
        it to that thread instead, so the engine's threads never wait for the broker."""
        self._send_result(self._encode_result(result), result)

    def _encode_result(self, result: Result) -> bytes:
        """The message of a result; a result too large becomes a failure that fits."""
        result.mark_result_sent()
        message = encode_result(result, self.signer)
        too_large = self._too_large(message, f"The result of task {result.task_id}")
        if too_large is not None:
            logger.error("%s", too_large)
            # The thinker still gets one result for its task: the failure, without the value
            intermediate = result.complete is False
            result.drop_payloads(inputs=False)
            result.set_failure(too_large)
            if intermediate:  # the task goes on: its final result still follows
                result.complete = False
            message = encode_result(result, self.signer)
            if not self._fits(message):  # the inputs it kept are too large too
                result.drop_payloads(inputs=True)
                message = encode_result(result, self.signer)
        return message

    def _fits(self, message: bytes) -> bool:
        """Whether ``message`` is within :attr:`max_message_size`."""
        return self.max_message_size is None or len(message) <= self.max_message_size

    def _too_large(self, message: bytes, what: str) -> MessageTooLargeError | None:
        """The error to report if ``message`` exceeds :attr:`max_message_size`."""
        if self._fits(message):
            return None
        limit = self.max_message_size
        return MessageTooLargeError(
            f"{what} is {len(message):,} bytes, more than {type(self).__name__} carries "
            f"({limit:,} bytes): pass large objects through ProxyStore (proxystore_name "
            "and proxystore_threshold)"
        )

    # -------------------------------------------------------------- transport
    def _wait_confirmed(self, task_id: str | None, timeout: float | None) -> bool:
        """Wait until the transport holds the request of ``task_id`` (``None``: every request
        sent so far). Transports that hand a request over before returning from
        :meth:`_send_request` (pipes, Redis) are always done.

        Raises:
            TransportError: the request of ``task_id`` was refused
        """
        return True

    def _reply_address(self) -> str | None:
        """Where results of this client's tasks go, for transports that route them
        (carried in each request as :attr:`Result.reply_to`)."""
        return None

    @abstractmethod
    def _send_request(
        self, message: bytes, method: str | None, topic: str, task_id: str = ""
    ) -> None:
        """Deliver an encoded task request (of task ``task_id``) to the task servers serving
        ``method``."""

    @abstractmethod
    def _get_request(self, timeout: float | None) -> Result:
        """Wait for the next task request, decoded with :meth:`decode_request`.

        Raises:
            TimeoutException: nothing arrived within ``timeout`` seconds
            KillSignalException: the kill signal arrived
            MessageDecodeError: what arrived is not a message (it is dropped)
        """

    @abstractmethod
    def _send_result(self, message: bytes, result: Result) -> None:
        """Deliver an encoded result to the client that sent the task (``result.topic``)."""

    @abstractmethod
    def _get_result(self, topic: str, timeout: float | None) -> Result:
        """Wait for the next result of ``topic``, decoded with :meth:`decode_result`.

        Raises:
            TimeoutException: nothing arrived within ``timeout`` seconds
            MessageDecodeError: what arrived is not a message (it is dropped)
        """

    @abstractmethod
    def _send_kill_signal(self) -> None:
        """Deliver the kill signal (:meth:`kill_message`) to every task server."""

    @abstractmethod
    def flush(self) -> None:
        """Remove all existing requests and results from the queues."""
