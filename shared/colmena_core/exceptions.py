"""Exceptions specific to Colmena.

The two signals derive from :class:`BaseException`, as in the original library, so that a
bare ``except Exception`` in user code does not swallow what stops a task server.
"""

__all__ = [
    "KillSignalException",
    "MessageAuthenticationError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "TimeoutException",
]


class KillSignalException(BaseException):
    """Server has received a signal to stop."""


class TimeoutException(BaseException):
    """Timeout on listening to a queue has occurred."""


class MessageTooLargeError(ValueError):
    """A task or its result is larger than the queue's transport carries.

    Raised by ``send_inputs``; a result that is too large reaches its thinker as a failure
    with this error as the reason. Large objects should travel through ProxyStore.
    """


class MessageDecodeError(ValueError):
    """The bytes are not a Colmena message, or break one of its limits.

    Transports dead-letter (or drop, with a warning) such messages, naming the reason.
    """


class MessageAuthenticationError(MessageDecodeError):
    """A message is unsigned, or its signature does not match the campaign secret, or it
    is addressed to a client that did not send its task.

    Raised before anything in the message is parsed or unpickled; transports dead-letter
    (or drop, with a warning) such messages, naming the reason.
    """
