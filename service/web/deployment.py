"""Start-up checks that a host agrees with the rest of its deployment (SPEC §15).

Before a host serves, every secret the deployment hands out (console secret key, signing keys'
key-encryption key, later the unlock master key) is compared with the id the first host
recorded in Redis, and the steps that need Redis once (the first signing key) are run. A
mismatch stops start-up with :class:`~service.crypto.secrets.SecretMismatch`, naming both ids.

Redis may be away when a host starts (the host then answers 503 like any host during an
outage). The checks are then retried before each request until Redis answers; a mismatch found
that late is logged and every request is answered 503 (the host serves nothing it might get
wrong) until it is restarted with the right secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.crypto.secrets import SecretIdRegistry, SecretMismatch, SharedSecret, ensure_shared
from service.web.errors import is_outage

log = logging.getLogger(__name__)


class DeploymentChecks:
    """The shared secrets to check and the once-only steps, run at start-up or when Redis
    is first reachable."""

    def __init__(self, registry: SecretIdRegistry):
        self.registry = registry
        self.secrets: list[SharedSecret] = []
        self.steps: list[Callable[[], None]] = []
        self.pending = True
        self.refused: SecretMismatch | None = None
        self._lock = threading.Lock()

    def add_secret(self, secret: SharedSecret) -> None:
        """Check SECRET against the deployment's recorded id (before any step runs)."""
        self.secrets.append(secret)

    def add_step(self, step: Callable[[], None]) -> None:
        """Run STEP once Redis answers (after the secrets are checked)."""
        self.steps.append(step)

    def start(self) -> None:
        """Run the checks now; raise SecretMismatch; on a Redis outage, leave them pending."""
        try:
            self._run()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "Redis unreachable at start-up: the shared secrets are checked when it answers",
                extra={"error": type(exc).__name__},
            )

    def ready(self) -> bool:
        """True once the checks passed (retrying them when pending); False while Redis is
        away. A mismatch found now is logged and kept: the host refuses to serve."""
        if self.refused is not None:
            return False
        if not self.pending:
            return True
        try:
            self._run()
        except SecretMismatch as exc:
            self.refused = exc
            log.error("refusing to serve: %s", exc)
            return False
        except Exception as exc:
            if is_outage(exc):
                return False
            raise
        return True

    def _run(self) -> None:
        with self._lock:
            if not self.pending:
                return
            for secret in self.secrets:
                ensure_shared(secret, self.registry)
            for step in self.steps:
                step()
            self.pending = False
            log.info("shared secrets agree", extra={s.name: s.id for s in self.secrets})
