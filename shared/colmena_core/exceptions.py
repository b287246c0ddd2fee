"""Exceptions specific to Colmena.

Both derive from :class:`BaseException`, as in the original library, so that a bare
``except Exception`` in user code does not swallow the signals that stop a task server.
"""

__all__ = ["KillSignalException", "TimeoutException"]


class KillSignalException(BaseException):
    """Server has received a signal to stop."""


class TimeoutException(BaseException):
    """Timeout on listening to a queue has occurred."""
