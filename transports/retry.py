"""Backoff schedules: how long to sleep between polls for a missing key and between retries.

Two different waits share one shape (exponential growth, a cap, jitter):

* *polling* (`Backoff`): `ObjectStore.get(key, timeout)` re-issues a GET for a key that does not
    exist yet. The first polls come quickly because in a pipelined collective the key usually
    appears within one chunk time; later polls slow down so a straggler costs few requests.
* *retrying* (`RetryPolicy`): a request that failed with a transient error (throttling, 5xx,
    dropped connection) is re-sent a bounded number of times with "full jitter", so that many
    functions throttled at the same moment do not retry in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "RetryPolicy"]


@dataclass(frozen=True)
class Backoff:
    """Sleep schedule between polls of a key that does not exist yet.

    Sleep k (k = 0, 1, ...) is `min(max_s, initial_s * factor**k)` times a uniform factor in
    `[1 - jitter, 1]`.

    Args:
        initial_s: first sleep, in seconds; > 0.
        factor: growth per poll; >= 1.
        max_s: longest sleep, in seconds; >= initial_s. It bounds how late a waiter notices a key.
        jitter: fraction of each sleep that is randomised, in [0, 1].
    """

    initial_s: float = 0.005
    factor: float = 1.5
    max_s: float = 0.1
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.factor >= 1 and self.max_s >= self.initial_s
                and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid Backoff {self}: need initial_s > 0, factor >= 1, "
                             "max_s >= initial_s and 0 <= jitter <= 1")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Returns sleep number `attempt` (0-based), in seconds."""
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())

    def to_dict(self) -> dict[str, float]:
        """Returns the JSON-able fields."""
        return {"initial_s": self.initial_s, "factor": self.factor, "max_s": self.max_s,
                "jitter": self.jitter}


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after which sleeps, a request that failed transiently is re-sent.

    Sleep before retry k (k = 0, 1, ...) is uniform in `[0, min(max_s, initial_s * 2**k)]`
    ("full jitter"). After `max_attempts` failed attempts the last error is raised.

    Args:
        max_attempts: attempts in total, including the first; >= 1.
        initial_s: cap of the first sleep, in seconds; >= 0.
        max_s: cap of any sleep, in seconds; >= initial_s.
    """

    max_attempts: int = 8
    initial_s: float = 0.05
    max_s: float = 2.0

    def __post_init__(self) -> None:
        if not (self.max_attempts >= 1 and 0 <= self.initial_s <= self.max_s):
            raise ValueError(f"invalid RetryPolicy {self}: need max_attempts >= 1 and "
                             "0 <= initial_s <= max_s")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Returns the sleep before retry number `attempt` (0-based), in seconds."""
        return rng.uniform(0.0, min(self.max_s, self.initial_s * 2.0 ** min(attempt, 64)))

    def to_dict(self) -> dict[str, float]:
        """Returns the JSON-able fields."""
        return {"max_attempts": self.max_attempts, "initial_s": self.initial_s, "max_s": self.max_s}
