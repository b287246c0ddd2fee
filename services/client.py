"""A small Python client for the gateway: submit tasks, then receive their results.

Example::

    from colmena_services.client import GatewayClient

    with GatewayClient("http://localhost:8000", token) as gateway:
        task_ids = {gateway.submit("simulate", 1.5), gateway.submit("simulate", 2.5)}
        for result in gateway.stream_results(idle_timeout=600):
            print(result["task_id"], result["value"])
            task_ids.discard(result["task_id"])
            if not task_ids:
                break

Results are dictionaries shaped like the gateway's ``TaskResult``. The gateway delivers
each result at least once; this client drops the duplicates (by task ID), so a loop over
:meth:`GatewayClient.stream_results` sees each result once, across reconnections too.
Every channel acknowledges a result only once it was handled (``ack=client``): the
streams when the loop asks for the next result or ends, :meth:`~GatewayClient.results`
on the next call or :meth:`~GatewayClient.close`. A program that dies while handling a
result gets it again next time.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from colmena_core.backoff import Backoff

__all__ = ["GatewayClient", "GatewayError", "SubmissionError", "UnservedMethodWarning"]

_API = "/api/v1"
_SEEN_KEPT = 100_000


class GatewayError(Exception):
    """The gateway refused a request; :attr:`status_code` and :attr:`detail` say why."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class UnservedMethodWarning(UserWarning):
    """The gateway accepted a task for a method that no live task server serves: it waits in
    the broker until a task server for it starts (a typo in the method name waits forever)."""


def _warn_unserved(answer: Mapping[str, Any]) -> None:
    if answer.get("warning"):
        warnings.warn(str(answer["warning"]), UnservedMethodWarning, stacklevel=3)


class SubmissionError(GatewayError):
    """Some batches of :meth:`GatewayClient.submit_many` were refused.

    :attr:`task_ids` has one entry per task, in order: its ID if the gateway accepted it (it
    will run), ``None`` if not. :attr:`status_code` and :attr:`detail` are those of the
    first refusal.
    """

    def __init__(self, first: GatewayError, task_ids: list[str | None]) -> None:
        super().__init__(first.status_code, first.detail)
        self.task_ids = task_ids


class GatewayClient:
    """Client of one API token on a Colmena gateway.

    Args:
        base_url: Where the gateway listens, e.g. ``http://localhost:8000``
        token: The API token of this client
        timeout: Seconds to wait for an ordinary request
    """

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._unacknowledged: list[str] = []

    def close(self) -> None:
        """Acknowledge the results the last :meth:`results` returned; close the connections."""
        try:
            if self._unacknowledged:
                self.acknowledge(self._unacknowledged)
        except (GatewayError, httpx.HTTPError):
            pass  # not acknowledged: they come again
        finally:
            self._unacknowledged = []
            self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, _API + path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise GatewayError(response.status_code, detail)
        return response.json()

    def _is_new(self, result: Mapping[str, Any]) -> bool:
        if result.get("complete") is False:  # intermediate results share their task's ID
            return True
        task_id = str(result.get("task_id"))
        if task_id in self._seen:
            return False
        self._seen[task_id] = None
        if len(self._seen) > _SEEN_KEPT:
            self._seen.popitem(last=False)
        return True

    def _stream_url(self, path: str, **params: Any) -> str:
        query = urlencode([(k, v) for k, v in params.items() if v is not None], doseq=True)
        scheme, netloc, base, _, _ = urlsplit(self.base_url)
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        return urlunsplit((scheme, netloc, base + _API + path, query, ""))

    # ------------------------------------------------------------------ tasks
    @staticmethod
    def task(
        method: str,
        *args: Any,
        topic: str = "default",
        keep_inputs: bool = False,
        task_info: Mapping[str, Any] | None = None,
        resources: Mapping[str, int] | None = None,
        max_retries: int = 0,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The JSON description of a task, for :meth:`submit_batch`."""
        body: dict[str, Any] = {
            "method": method,
            "args": list(args),
            "kwargs": kwargs,
            "topic": topic,
            "keep_inputs": keep_inputs,
            "task_info": dict(task_info or {}),
            "max_retries": max_retries,
        }
        if resources is not None:
            body["resources"] = dict(resources)
        return body

    def submit(
        self,
        method: str,
        *args: Any,
        topic: str = "default",
        keep_inputs: bool = False,
        task_info: Mapping[str, Any] | None = None,
        resources: Mapping[str, int] | None = None,
        max_retries: int = 0,
        **kwargs: Any,
    ) -> str:
        """Submit one task (JSON arguments); return its task ID once the broker has it.

        Warns with :class:`UnservedMethodWarning` when no live task server serves ``method``
        (the task is accepted and waits for one).

        Raises:
            GatewayError: the gateway refused it (401 token, 413 size, 422 invalid, 503 broker)
        """
        body = self.task(
            method,
            *args,
            topic=topic,
            keep_inputs=keep_inputs,
            task_info=task_info,
            resources=resources,
            max_retries=max_retries,
            **kwargs,
        )
        answer = self._request("POST", "/tasks", json=body)
        _warn_unserved(answer)
        return str(answer["task_id"])

    def submit_batch(self, tasks: Iterable[Mapping[str, Any]]) -> list[str]:
        """Submit tasks made with :meth:`task` in one request; return their IDs in order.

        The gateway accepts all of them or none, up to its ``max_batch`` tasks (1,000 by
        default); :meth:`submit_many` takes any number.
        """
        body = {"tasks": [dict(task) for task in tasks]}
        answer = self._request("POST", "/tasks/batch", json=body)
        _warn_unserved(answer)
        return [str(t) for t in answer["task_ids"]]

    def submit_many(
        self, tasks: Iterable[Mapping[str, Any]], batch_size: int = 100, in_flight: int = 4
    ) -> list[str]:
        """Submit any number of tasks made with :meth:`task`; return their IDs in order.

        Tasks go in batches of ``batch_size``, with up to ``in_flight`` batches sent at once:
        the gateway answers a batch only once the broker has confirmed all of it, and
        several batches in flight keep the broker busy meanwhile.

        Raises:
            SubmissionError: some batches were refused; the others were accepted and run,
                and the error says which tasks were (:attr:`SubmissionError.task_ids`)
        """
        if batch_size < 1 or in_flight < 1:
            raise ValueError("batch_size and in_flight must be at least 1")
        listed = [dict(task) for task in tasks]
        batches = [listed[i : i + batch_size] for i in range(0, len(listed), batch_size)]

        def send(batch: list[dict[str, Any]]) -> list[str] | GatewayError:
            try:
                return self.submit_batch(batch)
            except GatewayError as exc:
                return exc

        with ThreadPoolExecutor(min(in_flight, max(len(batches), 1))) as pool:
            answers = list(pool.map(send, batches))
        task_ids: list[str | None] = []
        refusals = []
        for batch, answer in zip(batches, answers, strict=True):
            if isinstance(answer, GatewayError):
                refusals.append(answer)
                task_ids += [None] * len(batch)
            else:
                task_ids += answer
        if refusals:
            raise SubmissionError(refusals[0], task_ids)
        return [str(t) for t in task_ids]

    def methods(self) -> list[dict[str, Any]]:
        """The methods the campaign's task servers serve now."""
        return list(self._request("GET", "/methods")["methods"])

    def status(self) -> dict[str, Any]:
        """The campaign's status."""
        return dict(self._request("GET", "/status"))

    # ---------------------------------------------------------------- results
    def acknowledge(self, task_ids: Sequence[str]) -> list[str]:
        """Tell the gateway these results were handled; returns those it acknowledged.

        The others were given back to the broker meanwhile (they come again, and are
        dropped as duplicates by this client).
        """
        if not task_ids:
            return []
        answer = self._request("POST", "/results/ack", json={"task_ids": list(task_ids)})
        return list(answer["acknowledged"])

    def results(
        self, timeout: float = 20.0, max_results: int = 100, topics: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds for results (long-poll); new ones only.

        The results returned are acknowledged by the next call (or :meth:`close`): if the
        program dies before, the gateway gives them back to the broker and they come again.
        """
        if self._unacknowledged:
            self.acknowledge(self._unacknowledged)
            self._unacknowledged = []
        params: dict[str, Any] = {"timeout": timeout, "max": max_results, "ack": "client"}
        if topics:
            params["topic"] = list(topics)
        answer = self._request(
            "GET", "/results", params=params, timeout=httpx.Timeout(self.timeout + timeout)
        )
        new: list[dict[str, Any]] = []
        duplicates: list[dict[str, Any]] = []
        for result in answer["results"]:
            (new if self._is_new(result) else duplicates).append(result)
        if duplicates:
            self.acknowledge([r["task_id"] for r in duplicates])
        self._unacknowledged = [r["task_id"] for r in new]
        return new

    def stream_results(
        self,
        idle_timeout: float | None = 60.0,
        topics: Sequence[str] | None = None,
        reconnect: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Results as they arrive, over a WebSocket, each acknowledged once handled.

        A result is acknowledged when the loop asks for the next one or is left (``break``,
        an exception), so a result being handled when the program dies is delivered again. The connection is opened again
        when it drops (a gateway restart), unless ``reconnect`` is false.

        Args:
            idle_timeout: Raise :class:`TimeoutError` after this many seconds without a
                new result (``None``: wait forever)
            topics: Only results of these topics
            reconnect: Reconnect when the connection drops
        Raises:
            GatewayError: the gateway refused the token (close code 1008)
            TimeoutError: no result within ``idle_timeout`` seconds
        """
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        url = self._stream_url("/results/ws", ack="client", topic=list(topics or []) or None)
        headers = {"Authorization": f"Bearer {self.token}"}
        last_result = time.monotonic()
        backoff = Backoff(limit=2.0)

        def remaining() -> float | None:
            if idle_timeout is None:
                return None
            left = idle_timeout - (time.monotonic() - last_result)
            if left <= 0:
                raise TimeoutError(f"No result within {idle_timeout} s")
            return left

        while True:
            try:
                with connect(url, additional_headers=headers, open_timeout=self.timeout) as socket:
                    backoff.reset()
                    while True:
                        message = json.loads(socket.recv(timeout=remaining()))
                        if message.get("type") != "result":
                            continue
                        result = message["result"]
                        ack = json.dumps({"type": "ack", "task_ids": [result["task_id"]]})
                        if self._is_new(result):
                            last_result = time.monotonic()
                            try:
                                yield result
                            except GeneratorExit:  # the loop is left: this one was handled
                                socket.send(ack)
                                raise
                        socket.send(ack)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1008:
                    raise GatewayError(401, exc.rcvd.reason) from None
                if not reconnect:
                    raise
            except InvalidStatus as exc:  # refused before opening: 429/503 say when to retry
                response = exc.response
                if response.status_code not in _RETRIED or not reconnect:
                    raise GatewayError(
                        response.status_code, _detail(bytes(response.body))
                    ) from None
                _sleep_retry_after(response.headers.get("Retry-After"), remaining())
                continue
            except (OSError, InvalidHandshake):
                if not reconnect:
                    raise
            wait = remaining()
            backoff.sleep(at_most=wait)

    def sse_results(
        self,
        idle_timeout: float | None = 60.0,
        topics: Sequence[str] | None = None,
        reconnect: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Results as they arrive, over Server-Sent Events, each acknowledged once handled.

        Like :meth:`stream_results`, a result is acknowledged (``POST /results/ack``) when
        the loop asks for the next one or is left.

        Args:
            idle_timeout: Raise :class:`TimeoutError` after this many seconds without a
                new result (``None``: wait forever)
            topics: Only results of these topics
            reconnect: Reconnect when the connection drops
        Raises:
            GatewayError: the gateway refused the request
            TimeoutError: no result within ``idle_timeout`` seconds
        """
        params: dict[str, Any] = {"ack": "client"}
        if topics:
            params["topic"] = list(topics)
        last_result = time.monotonic()
        backoff = Backoff(limit=2.0)

        def check_idle() -> None:
            if idle_timeout is not None and time.monotonic() - last_result > idle_timeout:
                raise TimeoutError(f"No result within {idle_timeout} s")

        read_timeout = 20.0 if idle_timeout is None else min(idle_timeout, 20.0)
        while True:
            try:
                with self._http.stream(
                    "GET",
                    _API + "/results/sse",
                    params=params,
                    timeout=httpx.Timeout(self.timeout, read=read_timeout),
                ) as response:
                    if response.status_code in _RETRIED and reconnect:
                        check_idle()
                        _sleep_retry_after(response.headers.get("Retry-After"), read_timeout)
                        continue
                    if response.status_code >= 400:
                        response.read()
                        raise GatewayError(
                            response.status_code, response.json().get("detail", response.text)
                        )
                    backoff.reset()
                    event: str | None = None
                    data: list[str] = []
                    for line in response.iter_lines():
                        if line == "":
                            if event == "result" and data:
                                result = json.loads("\n".join(data))
                                if self._is_new(result):
                                    last_result = time.monotonic()
                                    try:
                                        yield result
                                    except GeneratorExit:  # the loop is left: handled
                                        self.acknowledge([result["task_id"]])
                                        raise
                                self.acknowledge([result["task_id"]])
                            event, data = None, []
                            check_idle()
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
            except httpx.ReadTimeout:
                check_idle()
                continue
            except (httpx.TransportError, httpx.StreamError):
                if not reconnect:
                    raise
            check_idle()
            backoff.sleep()


def _detail(body: bytes | None) -> Any:
    """The ``detail`` of a JSON error body (the body as text if it is not one)."""
    try:
        return json.loads(body or b"{}").get("detail")
    except (ValueError, AttributeError):
        return (body or b"").decode(errors="replace")


_RETRIED = frozenset({429, 503})
"""Refusals of a stream that a reconnecting client waits out (too many streams open, the
gateway full or the broker away): the answer's ``Retry-After`` says how long."""


def _sleep_retry_after(value: str | None, at_most: float | None) -> None:
    """Sleep as long as a ``Retry-After`` header says (seconds; 1 s if absent or a date)."""
    try:
        wait = max(float(value or 1.0), 0.0)
    except ValueError:
        wait = 1.0
    time.sleep(wait if at_most is None else min(wait, at_most))
