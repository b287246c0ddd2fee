"""Exceptions specific to Colmena.

The two signals derive from :class:`BaseException`, as in the original library, so that a
bare ``except Exception`` in user code does not swallow what stops a task server.
Everything a transport raises about moving messages derives from :class:`TransportError`.
"""

__all__ = [
    "BrokerConnectionError",
    "KillSignalException",
    "MessageAuthenticationError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "TimeoutException",
    "TransportError",
]


class KillSignalException(BaseException):
    """Server has received a signal to stop."""


class TimeoutException(BaseException):
    """Timeout on listening to a queue has occurred."""


class TransportError(Exception):
    """A queue could not move a message (the base of every transport error)."""


class MessageTooLargeError(TransportError, ValueError):
    """A task or its result is larger than the queue's transport carries.

    Raised by ``send_inputs``; a result that is too large reaches its thinker as a failure
    with this error as the reason. Large objects should travel through ProxyStore.

    Attributes:
        size: Bytes of the message, when known
        limit: Bytes the transport carries, when known
    """

    def __init__(self, message: str, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class BrokerConnectionError(TransportError, ConnectionError):
    """The broker could not be reached, or did not confirm a message, in time."""


class MessageDecodeError(TransportError, ValueError):
    """The bytes are not a Colmena message, or break one of its limits.

    Transports dead-letter (or drop, with a warning) such messages, naming the reason.
    """


class MessageAuthenticationError(MessageDecodeError):
    """A message is unsigned, or its signature does not match the campaign secret, or it
    is addressed to a client that did not send its task.

    Raised before anything in the message is parsed or unpickled; transports dead-letter
    (or drop, with a warning) such messages, naming the reason.
    """
