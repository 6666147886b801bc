"""The one failure the resolver reports: a reason code and a message for the person waiting."""

from __future__ import annotations

from bindery.events import FailureReason


class ResolveError(Exception):
    """The launch cannot go on; `str(self)` is safe to show to whoever sent the link."""

    def __init__(self, message: str, reason: FailureReason = FailureReason.INVALID_SPEC) -> None:
        super().__init__(message)
        self.reason = reason
