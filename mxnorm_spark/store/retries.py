"""How the store rides out a flaky object store: a bounded retry with jittered backoff.

An object store answers 500/503 under load, times out, and drops connections; each of the
operations a commit uses (HEAD, GET, LIST, the conditional PUT of a version, PUT, DELETE)
is retried by one :class:`RetryPolicy`. The clients' own retries (the AWS SDK of
``pyarrow.fs``, botocore) are turned off where the store builds them, so this policy is
the only one and its bound is the documented one:

* at most ``attempts`` tries of one operation;
* before try ``k`` (k = 1, 2, ...) a pause of ``min(max_delay, base_delay * 2**(k-1))``,
  scaled by a random factor in ``[1 - jitter, 1]`` (writers that failed together do not
  retry together);
* no new try once ``deadline`` seconds have passed since the first;
* each request waits at most ``timeout`` seconds for an answer.

With the defaults (6 tries, 0.2 s doubling to at most 5 s, a 60 s deadline) one operation
gives up after at most 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.2 s of pauses plus its tries' time.
Then it raises :class:`~mxnorm_spark.core.errors.StoreUnavailableError` naming the operation,
the path, the tries and the last error. Not found, access denied and other answers that a
retry cannot change are raised at once.

A retried PUT may have landed the first time with its answer lost. Plain PUTs and DELETEs
are idempotent; an exclusive create that then finds the object present compares its bytes
and counts it as its own when they are equal (:meth:`ArrowFileSystem.create_exclusive
<mxnorm_spark.store.filesystems.ArrowFileSystem.create_exclusive>`).

>>> pauses = []
>>> policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.25, jitter=0.0,
...                      sleep=pauses.append)
>>> calls = iter([ConnectionResetError("reset"), TimeoutError("slow"), "done"])
>>> def flaky():
...     outcome = next(calls)
...     if isinstance(outcome, Exception):
...         raise outcome
...     return outcome
>>> policy.call("GET", "s3://b/k", flaky), pauses
('done', [0.1, 0.2])
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mxnorm_spark.core.errors import InvalidParameterError, StoreUnavailableError

T = TypeVar("T")

# Answers a retry cannot change: raised at once, never retried.
_PERMANENT = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
# pyarrow.fs raises a plain OSError whose text carries the AWS error and HTTP status.
_AWS_STATUS = re.compile(r"HTTP status (\d{3})|HTTP response code (\d{3})|status code:? (\d{3})")
_AWS_PERMANENT = (
    "ACCESS_DENIED",
    "AccessDenied",
    "NO_SUCH_BUCKET",
    "NoSuchBucket",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
)
# HTTP statuses worth another try: the server's own failures, throttling, request timeout.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

__all__ = ["DEFAULT_RETRY", "RETRIES_ENV", "RetryPolicy", "is_transient"]

RETRIES_ENV = "MXNORM_STORE_RETRIES"


def is_transient(exc: BaseException) -> bool:
    """Whether another try of the same request may succeed (see the module docstring)."""
    if isinstance(exc, _PERMANENT):
        return False
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith("botocore"):
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # a ClientError: the server answered
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(response.get("Error", {}).get("Code", ""))
            return status in _TRANSIENT_STATUS or code in (
                "SlowDown",
                "ServiceUnavailable",
                "InternalError",
                "RequestTimeout",
                "500",
                "503",
            )
        # No answer: connection refused, reset or closed, read or connect timeout.
        return any(
            base.__name__ in ("ConnectionError", "HTTPClientError")
            for base in type(exc).__mro__
        ) or name.endswith(("TimeoutError", "ConnectionError"))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        text = str(exc)
        if any(marker in text for marker in _AWS_PERMANENT):
            return False
        match = _AWS_STATUS.search(text)
        if match is not None:
            status = int(next(g for g in match.groups() if g))
            return status in _TRANSIENT_STATUS or status == 0
        # pyarrow's network failures (curl: reset, timeout, connection refused) carry no
        # status; a local disk's OSError (full, read-only) is not retried.
        return "AWS Error" in text or "curl" in text.lower()
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter (see the module docstring).

    ``sleep`` and ``rng`` are there for tests (record the pauses, fix the jitter).
    """

    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0
    jitter: float = 0.5
    deadline: float = 60.0
    timeout: float = 20.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False, compare=False)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise InvalidParameterError(
                f"attempts must be a whole number >= 1, got {self.attempts!r}"
            )
        if self.attempts < 1:
            raise InvalidParameterError(f"attempts must be >= 1, got {self.attempts}")
        for name in ("base_delay", "max_delay", "deadline", "timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise InvalidParameterError(
                    f"{name} must be a finite number of seconds >= 0, got {value!r}"
                )
        if self.timeout == 0:
            raise InvalidParameterError("timeout must be > 0 seconds")
        if not 0 <= self.jitter <= 1:
            raise InvalidParameterError(f"jitter must be in [0, 1], got {self.jitter!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with ``MXNORM_STORE_RETRIES=<attempts>[,<timeout seconds>]``
        applied when set (a job's knob without code)."""
        spec = os.environ.get(RETRIES_ENV, "").strip()
        if not spec:
            return cls()
        head, _, tail = spec.partition(",")
        try:
            attempts = int(head)
            timeout = float(tail) if tail.strip() else cls.timeout
        except ValueError:
            raise InvalidParameterError(
                f"{RETRIES_ENV}={spec!r}: expected <attempts>[,<timeout seconds>], e.g. 6,20"
            ) from None
        return cls(attempts=attempts, timeout=timeout)

    def delay(self, attempt: int) -> float:
        """The pause before try ``attempt + 1`` (``attempt`` >= 1 tries done), jittered."""
        full = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return float(full * (1.0 - self.jitter * self.rng.random()))

    def call(self, operation: str, path: str, fn: Callable[[], T]) -> T:
        """``fn()``, tried again on a transient failure; :class:`StoreUnavailableError`
        once the tries or the deadline are used up."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                elapsed = time.monotonic() - start
                pause = self.delay(attempt)
                if attempt >= self.attempts or elapsed + pause > self.deadline:
                    raise StoreUnavailableError(
                        f"{operation} {path} failed {attempt} time(s) in {elapsed:.1f} s, "
                        f"last with {type(exc).__name__}: {_first_line(exc)}. The store is "
                        "unreachable or overloaded; this operation did not complete. Run "
                        "again once it answers (a stream replays the batch exactly once), "
                        f"or allow more tries ({RETRIES_ENV} or RetryPolicy(attempts=...))"
                    ) from exc
                self.sleep(pause)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"


DEFAULT_RETRY = RetryPolicy()
