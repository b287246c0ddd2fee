"""The thread that encodes and publishes a task server's results, off the engine's threads."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from colmena_core.models import Result

__all__ = ["ResultSender"]

logger = logging.getLogger(__name__)


class ResultSender:
    """A thread that encodes and publishes the results a task server hands over.

    ``send_result`` runs on the engine's threads (Parsl's result thread, a worker pool):
    it must not block there while the broker is slow or away. It appends the result here
    and returns; this thread encodes it (``encode``) and publishes it (``publish``), in
    the order results were handed over.
    """

    def __init__(
        self,
        encode: Callable[[Result], bytes],
        publish: Callable[[Result, bytes], None],
    ) -> None:
        self._encode = encode
        self._publish = publish
        self._pending: deque[tuple[float, Result]] = deque()
        self._changed = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="colmena-results", daemon=True)
        self._thread.start()

    def put(self, result: Result) -> None:
        with self._changed:
            if self._stopping:
                raise RuntimeError("The result sender is stopped")
            self._pending.append((time.monotonic(), result))
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every result handed over is published (not necessarily confirmed)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._busy, timeout)

    def stop(self, timeout: float) -> None:
        """Publish what was handed over (within ``timeout``), then end the thread."""
        self.wait_idle(timeout)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def waited(self) -> float:
        """Seconds the oldest result handed over has waited to be published (0: none)."""
        with self._changed:
            return time.monotonic() - self._pending[0][0] if self._pending else 0.0

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._pending) + self._busy

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._stopping)
                if not self._pending:
                    return
                _, result = self._pending.popleft()
                self._busy = True
            try:
                self._publish(result, self._encode(result))
            except Exception:
                # The request stays unacknowledged: the broker gives it to a server again
                logger.exception("Could not send the result of task %s", result.task_id)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
