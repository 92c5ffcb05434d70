"""The service's life: warming up → ready → draining (after SIGTERM) → stopped.

Readiness (`/health/ready`) is true only between the end of the warm-up and the start of the
drain, and not while an inference process that died cannot be replaced; the drain waits for
the admitted requests to be answered (bounded by --drain-seconds) before the server stops
listening.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServiceState:
    """Flags and the count of admitted requests, shared by the app, the limits and the server."""

    warmed_up: bool = False
    draining: bool = False
    in_flight: int = 0
    warm_up_seconds: float = 0.0
    unavailable: str = ""  # why an inference process is down and not yet replaced

    @property
    def ready(self) -> bool:
        """True when the service takes prediction requests."""
        return self.warmed_up and not self.draining and not self.unavailable

    def not_ready_reason(self) -> str:
        """One sentence saying why the service is not ready ('' when it is)."""
        if self.draining:
            return "the service is shutting down; send the request to another instance"
        if self.unavailable:
            return self.unavailable
        if not self.warmed_up:
            return "the model is still warming up; retry in a moment"
        return ""
