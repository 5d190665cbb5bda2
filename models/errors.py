"""The exception hierarchy of causalcast (below both ``models`` and ``streaming``, which import it).

Every error a client can cause maps to one wire ``code`` (see docs/protocol.md). A fault in one session
ends at most that session; ``fatal`` says whether the session survives the error.
"""

from __future__ import annotations


class CausalcastError(Exception):
    """Base of all errors reported to clients."""

    code = "internal"
    fatal = True  # the session cannot continue after this error

    def to_message(self) -> dict[str, object]:
        """The `error` control message for the client."""
        return {"type": "error", "code": self.code, "message": str(self), "fatal": self.fatal}


class ProtocolError(CausalcastError):
    """A malformed or out-of-place message; the session (if any) keeps running."""

    code = "bad_message"
    fatal = False

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


class ParamError(CausalcastError):
    """Bad start parameters or a bad control event for a model."""

    code = "bad_params"
    fatal = False


class CapacityError(CausalcastError):
    """Admitting one more session would make existing sessions late (or pass a configured limit).

    ``reason`` is a short label for metrics (``causalcast_sessions_refused{reason=...}``).
    """

    code = "capacity"
    fatal = True

    def __init__(self, message: str, reason: str = "capacity") -> None:
        super().__init__(message)
        self.reason = reason


class AuthError(CausalcastError):
    """A request without a valid token, or with one that does not allow what it asks (``status``: HTTP code)."""

    code = "unauthorized"
    fatal = True

    def __init__(self, message: str, reason: str, status: int = 401) -> None:
        super().__init__(message)
        self.reason = reason  # label for causalcast_refusals{reason=...}
        self.status = status
        if status == 403:
            self.code = "forbidden"


class ModelError(CausalcastError):
    """The generator failed while stepping this session."""

    code = "model_error"
    fatal = True


class WeightsError(CausalcastError):
    """Published weights that are missing, corrupt or of the wrong shape; names the file and the key.

    Raised while a model loads, before the server accepts anyone: it refuses to start rather than fall
    back to another model.
    """

    code = "bad_weights"
    fatal = True


class ShutdownError(CausalcastError):
    """The server is shutting down."""

    code = "shutdown"
    fatal = True
