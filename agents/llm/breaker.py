"""A circuit breaker per model route, its state shared by every process through Django's
cache (Redis in production, the file cache in the embedded setup).

closed --(``failures`` failures within ``window`` s)--> open --(``cooldown`` s)--> half-open
half-open: one caller at a time gets a probe; its success closes the breaker, its failure
opens it again for another cool-down.

The clock is injectable so the logic is tested without waiting. Read-modify-write on the
failure list is not atomic across processes: under a burst two processes may each count a
failure the other missed, so the breaker opens at roughly, not exactly, ``failures``; the
half-open probe slot uses ``cache.add``, which is atomic on Redis and on the file cache.
If the cache itself is unreachable the breaker lets calls through (it protects the route,
not an invariant) and logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import cache as default_cache

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_STATE_TTL = 24 * 3600  # cache entry lifetime (real seconds); the state itself carries times


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        window: float = 60.0,
        cooldown: float = 30.0,
        probe_ttl: float = 120.0,
        clock: Callable[[], float] = time.time,
        cache: Any = None,
    ):
        self.name = name
        self.failures = failures
        self.window = window
        self.cooldown = cooldown
        self.probe_ttl = probe_ttl
        self.clock = clock
        self.cache = cache or default_cache
        self.key = f"llm:breaker:{name}"
        self.probe_key = f"llm:breaker:{name}:probe"

    # -- state --------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            return self.cache.get(self.key) or {}
        except Exception:
            logger.warning("breaker %s: cache unreachable, letting the call through", self.name)
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        try:
            if state:
                self.cache.set(self.key, state, timeout=_STATE_TTL)
            else:
                self.cache.delete(self.key)
        except Exception:
            logger.warning("breaker %s: cache unreachable, state not saved", self.name)

    def state(self) -> str:
        opened = self._load().get("opened_at")
        if opened is None:
            return CLOSED
        return OPEN if self.clock() - opened < self.cooldown else HALF_OPEN

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        opened = self._load().get("opened_at")
        if opened is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - opened))

    # -- protocol -----------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go to this route now? In half-open, only the one probe may."""
        opened = self._load().get("opened_at")
        if opened is None:
            return True
        if self.clock() - opened < self.cooldown:
            return False
        try:
            return bool(self.cache.add(self.probe_key, self.clock(), timeout=self.probe_ttl))
        except Exception:
            return True

    def record_success(self) -> None:
        state = self._load()
        if state:
            self._save({})
        self._release_probe()

    def record_failure(self) -> None:
        now = self.clock()
        state = self._load()
        if state.get("opened_at") is not None:
            # A failed half-open probe (or a straggler while open): open for another cool-down.
            self._save({"opened_at": now, "failures": []})
            self._release_probe()
            return
        recent = [t for t in state.get("failures", []) if now - t < self.window]
        recent.append(now)
        if len(recent) >= self.failures:
            logger.warning("breaker %s opened after %d failures in %.0fs", self.name, len(recent),
                           self.window)
            self._save({"opened_at": now, "failures": []})
        else:
            self._save({"failures": recent})

    def reset(self) -> None:
        self._save({})
        self._release_probe()

    def _release_probe(self) -> None:
        try:
            self.cache.delete(self.probe_key)
        except Exception:
            logger.warning("breaker %s: cache unreachable, probe slot not released", self.name)
