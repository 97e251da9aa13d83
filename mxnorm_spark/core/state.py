"""The MXNorm state: per-feature EMA mean and variance, numpy only (no Spark import).

Semantics (docs/design.md, section 1). For each batch with per-feature moments ``n, m, v``
(``v`` the population variance of the valid values):

* a feature's first batch with valid values initializes it: ``mu = m``, ``var = v``;
* later batches: ``mu = (1 - a) * mu + a * m`` and ``var = (1 - a) * var + a * v``;
* a feature with no valid value in the batch keeps its state; an empty batch changes
  nothing but is counted in ``batches_seen``;
* ``normalize(x) = (x - mu) / sqrt(var + eps)``.

Options (each off by default, so the defaults reproduce the reference loop exactly):

* ``var_update="mixture"``: ``var = (1 - a) * (var + a * (m - mu) ** 2) + a * v`` with the
  old ``mu``, which keeps the spread honest when batch means move (Finch / West).
* ``decay="rows"``: the weight of a batch grows with its size,
  ``a = 1 - (1 - alpha) ** n`` (per feature, ``n`` its valid values), so a batch of one
  row counts as one step of ``alpha``.
* ``alpha=None`` (or ``"cumulative"``): exact running moments over every batch so far
  (the StandardScaler answer), merged with the Chan formula.
* ``zero_variance``: what a feature whose variance is exactly 0 normalizes to.
  ``"eps"`` (default) divides by ``sqrt(0 + eps)``; ``"unit"`` uses scale 1, giving
  ``x - mu``; ``"zero"`` gives 0 for finite ``x`` (it divides by +inf, so NaN stays NaN).

Every engine normalizes with the same two float64 constants per feature, ``mean`` and
``scale`` from :meth:`MXNormState.normalization_constants`, as ``(x - mean) / scale``.

>>> import numpy as np
>>> s = MXNormState.create(["a", "b"], alpha=0.5)
>>> s = s.update(Moments.from_array(np.array([[0.0, 10.0], [2.0, 10.0]])))
>>> s = s.update(Moments.from_array(np.array([[4.0, np.nan]])))
>>> s.mean.tolist(), s.var.tolist(), s.batches_seen
([2.5, 10.0], [0.5, 0.0], 2)
>>> MXNormState.from_json(s.to_json()).mean.tolist()
[2.5, 10.0]
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from mxnorm_spark.core.choices import (
    APPLY_AT,
    DECAYS,
    VAR_UPDATES,
    ZERO_VARIANCE_POLICIES,
    ApplyAt,
    Decay,
    VarUpdate,
    ZeroVariance,
    check_choice,
)
from mxnorm_spark.core.errors import (
    CorruptStateError,
    FeatureMismatchError,
    InvalidParameterError,
    NotFittedError,
    UnsupportedSchemaVersionError,
    ValueRangeError,
)
from mxnorm_spark.core.moments import (
    Fields,
    FloatArray,
    Moments,
    all_counted,
    as_float_matrix,
    counted_moments,
    filled,
    fp_quiet,
    fp_restore,
    merge_fields,
    writeable,
)

STATE_TYPE = "mxnorm_spark.MXNormState"
SCHEMA_VERSION = 1


def check_alpha(alpha: Any) -> float | None:
    """Validate ``alpha``: a float in (0, 1], or None / "cumulative" for running moments."""
    if alpha is None or alpha == "cumulative":
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InvalidParameterError(
            f"alpha must be a number in (0, 1] or None/'cumulative', got {alpha!r}"
        )
    a = float(alpha)
    if not (0.0 < a <= 1.0):
        raise InvalidParameterError(f"alpha must be in (0, 1], got {alpha!r}")
    return a


def alpha_from_half_life(half_life: Any) -> float:
    """``alpha`` whose EMA halves the weight of what it folded after ``half_life`` steps:
    ``(1 - alpha) ** half_life == 0.5``, i.e. ``alpha = 1 - 0.5 ** (1 / half_life)``. A step
    is a batch, or with ``decay="rows"`` a row (``a = 1 - (1 - alpha) ** n`` per batch).

    >>> alpha_from_half_life(1), round(alpha_from_half_life(6.5788), 6)
    (0.5, 0.1)
    """
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)):
        raise InvalidParameterError(
            f"half_life must be a positive number of batches (rows with decay='rows'), "
            f"got {half_life!r}"
        )
    h = float(half_life)
    if not (math.isfinite(h) and h > 0.0):
        raise InvalidParameterError(
            f"half_life must be a positive finite number, got {half_life!r}"
        )
    # -expm1(log(0.5) / h) is 1 - 0.5 ** (1 / h) without the cancellation for large h.
    return -math.expm1(-math.log(2.0) / h)


def check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise InvalidParameterError(f"eps must be a positive finite number, got {eps!r}")
    e = float(eps)
    if not (math.isfinite(e) and e > 0.0):
        raise InvalidParameterError(f"eps must be a positive finite number (> 0), got {eps!r}")
    return e


@dataclass(frozen=True)
class StateOptions:
    """The five options of an MXNorm state, validated once and carried as one value.

    ``alpha`` is a float in (0, 1], or None (``"cumulative"`` is accepted and stored as
    None) for exact running moments; cumulative takes no ``var_update`` or ``decay``.
    ``half_life`` replaces ``alpha`` (:func:`alpha_from_half_life`).

    >>> StateOptions(alpha="cumulative").alpha is None
    True
    >>> StateOptions(alpha=0.5, var_update="mixture").to_dict()["var_update"]
    'mixture'
    >>> StateOptions(half_life=1).alpha
    0.5
    >>> StateOptions(decay="hours")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mxnorm_spark.core.errors.InvalidParameterError: decay must be one of [...], got 'hours'
    """

    alpha: float | None = 0.1
    eps: float = 1e-8
    var_update: VarUpdate = "ema"
    decay: Decay = "batch"
    zero_variance: ZeroVariance = "eps"
    # Instead of alpha: the EMA's half-life in batches (rows with decay="rows"); only
    # its alpha (alpha_from_half_life) is kept.
    half_life: InitVar[float | None] = None

    def __post_init__(self, half_life: float | None) -> None:
        if half_life is not None:
            if self.alpha != 0.1 and self.alpha != alpha_from_half_life(half_life):
                raise InvalidParameterError(
                    f"give alpha or half_life, not both (alpha={self.alpha!r}, "
                    f"half_life={half_life!r})"
                )
            object.__setattr__(self, "alpha", alpha_from_half_life(half_life))
        alpha = check_alpha(self.alpha)
        var_update = check_choice("var_update", self.var_update, VAR_UPDATES)
        decay = check_choice("decay", self.decay, DECAYS)
        if alpha is None and (var_update != "ema" or decay != "batch"):
            raise InvalidParameterError(
                "alpha=None (cumulative) computes exact running moments; it takes no "
                f"var_update or decay option (got var_update={var_update!r}, decay={decay!r})"
            )
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "eps", check_eps(self.eps))
        object.__setattr__(self, "var_update", var_update)
        object.__setattr__(self, "decay", decay)
        object.__setattr__(
            self,
            "zero_variance",
            check_choice("zero_variance", self.zero_variance, ZERO_VARIANCE_POLICIES),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "eps": self.eps,
            "var_update": self.var_update,
            "decay": self.decay,
            "zero_variance": self.zero_variance,
        }

    def differences(self, other: StateOptions, label: str = "other") -> list[str]:
        """``name=value (label: value)`` for each option where ``other`` differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}={mine[k]!r} ({label}: {theirs[k]!r})" for k in mine if mine[k] != theirs[k]]


def _check_features(features: Sequence[str]) -> tuple[str, ...]:
    if isinstance(features, str):
        raise InvalidParameterError(
            f"features must be a sequence of names, got the string {features!r}; "
            f"use [{features!r}] for one feature"
        )
    names = tuple(features)
    if not names:
        raise InvalidParameterError("features must name at least one feature")
    bad = [f for f in names if not isinstance(f, str) or not f]
    if bad:
        raise InvalidParameterError(f"feature names must be non-empty strings, got {bad!r}")
    # A set first: counting each name is quadratic (most of create() at 64 features).
    dup = sorted({f for f in names if names.count(f) > 1}) if len(set(names)) < len(names) else []
    if dup:
        raise InvalidParameterError(f"feature names must be unique; repeated: {dup}")
    return names


def _readonly(values: Any) -> FloatArray:
    arr = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class MXNormState:
    """An immutable MXNorm state; every update returns a new one.

    ``mean`` and ``var`` are NaN for a feature that has not seen a valid value yet.
    ``totals`` holds the exact running moments of every valid value folded so far
    (their ``count`` is the rows seen per feature); with ``alpha=None`` they are the state.
    """

    features: tuple[str, ...]
    options: StateOptions
    mean: FloatArray
    var: FloatArray
    totals: Moments
    batches_seen: int = 0
    last_batch_id: int | None = None

    @classmethod
    def create(
        cls,
        features: Sequence[str],
        alpha: float | str | None = 0.1,
        eps: float = 1e-8,
        *,
        var_update: VarUpdate = "ema",
        decay: Decay = "batch",
        zero_variance: ZeroVariance = "eps",
        options: StateOptions | None = None,
        half_life: float | None = None,
    ) -> MXNormState:
        """A state with no data yet; ``options`` replaces the five option arguments;
        ``half_life`` replaces ``alpha`` (:func:`alpha_from_half_life`).

        >>> MXNormState.create(["x"], alpha=0)
        Traceback (most recent call last):
        ...
        mxnorm_spark.core.errors.InvalidParameterError: alpha must be in (0, 1], got 0
        """
        names = _check_features(features)
        if options is None:
            options = StateOptions(alpha, eps, var_update, decay, zero_variance, half_life)  # type: ignore[arg-type]
        nan = np.full(len(names), np.nan)
        return cls(
            features=names,
            options=options,
            mean=_readonly(nan),
            var=_readonly(nan),
            totals=Moments.empty(len(names)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _readonly(self.mean))
        object.__setattr__(self, "var", _readonly(self.var))
        k = len(self.features)
        if self.mean.shape[0] != k or self.var.shape[0] != k or self.totals.n_features != k:
            raise FeatureMismatchError(
                f"state arrays do not match its {k} features "
                f"(mean {self.mean.shape[0]}, var {self.var.shape[0]}, "
                f"totals {self.totals.n_features})"
            )

    # ---- reading ------------------------------------------------------------------
    @property
    def alpha(self) -> float | None:
        return self.options.alpha

    @property
    def eps(self) -> float:
        return self.options.eps

    @property
    def var_update(self) -> VarUpdate:
        return self.options.var_update

    @property
    def decay(self) -> Decay:
        return self.options.decay

    @property
    def zero_variance(self) -> ZeroVariance:
        return self.options.zero_variance

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def initialized(self) -> np.ndarray:
        """Boolean per feature: has it seen a valid value?"""
        return np.asarray(self.totals.count > 0)

    @property
    def count(self) -> FloatArray:
        """Valid values folded so far, per feature."""
        return self.totals.count

    def _check_moments(self, moments: Moments) -> None:
        if not isinstance(moments, Moments):
            raise FeatureMismatchError(
                f"update expects a Moments, got {type(moments).__name__}; "
                "use Moments.from_array(x) for a numpy batch"
            )
        if moments.n_features != self.n_features:
            raise FeatureMismatchError(
                f"moments have {moments.n_features} features but the state has "
                f"{self.n_features}: {list(self.features)}"
            )

    # ---- the update ---------------------------------------------------------------
    def update(self, moments: Moments, batch_id: int | None = None) -> MXNormState:
        """Fold one batch's moments in and return the new state.

        ``batch_id`` is recorded as ``last_batch_id``; this method never skips a batch.
        Replays are recognised by the state store, which keeps one version per id.
        """
        if not isinstance(moments, Moments) or moments.count.shape != self.mean.shape:
            self._check_moments(moments)
        last = self.last_batch_id if batch_id is None else int(batch_id)
        had = all_counted(self.totals)
        # Every feature in the batch, and in the totals or in none of them (a new state).
        if all_counted(moments) and (
            had or (type(moments) is Moments and not self.totals.count.any())
        ):
            # numpy's warnings off: values that overflow are refused below with a named
            # error, which a RuntimeWarning ("invalid value encountered in dot") would
            # only precede.
            hot = self.__dict__.get("_hot") or _hot(len(self.features), self.options)
            token = fp_quiet()
            try:
                if had:
                    mean_var, merged = _update_counted(
                        self.options, self._stacked(), self.totals, moments, hot
                    )
                else:  # the first batch with data, every feature in it
                    mean_var, merged = _first_counted(moments), moments
                # Every value finite, or the state is refused: x . 0 is 0 for finite x and
                # NaN once one is NaN or inf (one BLAS call, a third of isfinite's two).
                overflowed = mean_var.dot(hot.zeros) != 0.0
            finally:
                fp_restore(token)
            if overflowed:
                k = len(self.features)
                seen = merged.count > 0
                check_range(self.features, mean_var[:k], mean_var[k:], seen, _batch_name(batch_id))
            return self._next(mean_var, merged, last, hot)
        mean, var, totals = update_lanes(
            self.options, self.mean, self.var, self.totals.fields(), moments.fields()
        )
        check_range(self.features, mean, var, Moments(*totals).count > 0, _batch_name(batch_id))
        return replace(
            self,
            mean=mean,
            var=var,
            totals=Moments(*totals),
            batches_seen=self.batches_seen + 1,
            last_batch_id=last,
        )

    def _stacked(self) -> FloatArray:
        """``mean`` then ``var`` in one array of ``2 * n_features`` (a state of the counted
        update keeps its own; the others build it): the EMA and the range check treat
        both in one numpy call each."""
        mean_var: FloatArray | None = self.__dict__.get("_mean_var")
        if mean_var is None:
            mean_var = np.concatenate((self.mean, self.var))
        return mean_var

    def _next(
        self, mean_var: FloatArray, totals: Moments, last_batch_id: int | None, hot: _Hot
    ) -> MXNormState:
        """The state after one more batch over a fresh ``mean`` then ``var`` array
        (:meth:`_stacked`), frozen in place; its fields are views of it: what ``replace``
        builds, without its copies and checks."""
        writeable(mean_var, False)
        k = len(self.features)
        state = object.__new__(MXNormState)
        state.__dict__.update(
            features=self.features,
            options=self.options,
            mean=mean_var[:k],
            var=mean_var[k:],
            totals=totals,
            batches_seen=self.batches_seen + 1,
            last_batch_id=last_batch_id,
            _mean_var=mean_var,
            _hot=hot,
        )
        return state

    # ---- normalization ------------------------------------------------------------
    def normalization_constants(
        self, fallback: MXNormState | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """``(mean, scale)`` per feature such that ``normalize(x) = (x - mean) / scale``.

        ``scale = sqrt(var + eps)``, or per the zero-variance policy where ``var == 0``.
        Features with no state take ``fallback``'s constants (used by ``applyAt='before'``:
        the batch's own moments); without one, they raise :class:`NotFittedError`.
        The arrays are read-only; without ``fallback`` they are computed once per state.
        """
        if fallback is None:
            cached: tuple[FloatArray, FloatArray] | None = self.__dict__.get("_constants")
            if cached is not None:
                return cached
            if all_counted(self.totals):  # every feature has a mean: nothing to name
                return self._cache_constants()
        mean, var = self.mean, self.var
        if fallback is not None:
            had = self.initialized
            mean = np.where(had, mean, fallback.mean)
            var = np.where(had, var, fallback.var)
        # Every feature counted (the common case) has a mean; else name those without one.
        if not all_counted(self.totals) or fallback is not None:
            unset = np.isnan(mean)
            if unset.any():
                missing = [f for f, u in zip(self.features, unset.tolist(), strict=True) if u]
                raise NotFittedError(
                    f"feature(s) {missing} have no state yet (no valid value has been seen); "
                    "fit or update on data where they have values first"
                )
        if fallback is not None:
            return _readonly(mean), _readonly(scale_of(var, self.options))
        return self._cache_constants()

    def _cache_constants(self) -> tuple[FloatArray, FloatArray]:
        options = self.options
        if options.zero_variance == "eps":  # scale_of's first step is all of it
            hot = self.__dict__.get("_hot")
            eps = filled(len(self.features), options.eps) if hot is None else hot.eps
            scale: FloatArray = np.sqrt(self.var + eps)
        else:
            scale = np.asarray(scale_of(self.var, options))
        writeable(scale, False)
        # The state is immutable, so are its constants: computed once, ``mean`` itself.
        constants = self.mean, scale
        self.__dict__["_constants"] = constants
        return constants

    def normalize(self, x: Any) -> FloatArray:
        """Normalize a 2-D array (rows x features) with this state; NaN stays NaN.

        >>> s = MXNormState.create(["x"]).update(Moments.from_array(np.array([[1.0], [3.0]])))
        >>> np.round(s.normalize(np.array([[3.0]])), 6).tolist()
        [[1.0]]
        """
        arr = as_float_matrix(x)
        if arr.shape[1] != len(self.features):
            raise FeatureMismatchError(
                f"x has {arr.shape[1]} columns but the state has {self.n_features} "
                f"features: {list(self.features)}"
            )
        constants = self.__dict__.get("_constants")
        if constants is None:
            counted = all_counted(self.totals)
            constants = self._cache_constants() if counted else self.normalization_constants()
        mean, scale = constants
        out: FloatArray = arr - mean
        # In place, spelled out: numpy's own temporary elision probes the call stack first,
        # which cost more than the division itself on large batches. Same bits.
        return np.divide(out, scale, out=out)

    def process_batch(
        self, x: Any, batch_id: int | None = None, apply_at: ApplyAt = "after"
    ) -> tuple[MXNormState, FloatArray]:
        """Update on a batch and normalize it, as one micro-batch of a stream would.

        ``apply_at="after"`` normalizes with the updated state; ``"before"`` with the state
        as it was (point-in-time correct), a feature with no state using the batch's own
        moments.
        """
        check_choice("apply_at", apply_at, APPLY_AT)
        arr = as_float_matrix(x)
        new = self.update(Moments.from_array(arr), batch_id)
        if apply_at == "after":
            return new, new.normalize(arr)
        mean, scale = self.normalization_constants(fallback=new)
        return new, np.asarray((arr - mean) / scale, dtype=np.float64)

    # ---- persistence --------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        def floats(a: FloatArray) -> list[float | None]:
            return [None if math.isnan(v) else v for v in a.tolist()]

        return {
            "features": list(self.features),
            **self.options.to_dict(),
            "mean": floats(self.mean),
            "var": floats(self.var),
            "totals": self.totals.to_dict(),
            "batches_seen": self.batches_seen,
            "last_batch_id": self.last_batch_id,
        }

    def to_json(self) -> str:
        """Versioned, type-tagged JSON with a SHA-256 checksum of the payload.

        Floats are written with ``repr`` and so round-trip bit for bit.
        """
        payload = self._payload()
        doc = {
            "type": STATE_TYPE,
            "schema_version": SCHEMA_VERSION,
            "checksum": _checksum(payload),
            "payload": payload,
        }
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "state") -> MXNormState:
        """Parse and verify a state written by :meth:`to_json`.

        Raises :class:`CorruptStateError` for anything unreadable or tampered with and
        :class:`UnsupportedSchemaVersionError` for a schema version this release cannot read.
        """
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptStateError(
                f"{source} is not valid JSON ({exc}); the file is truncated or corrupt"
            ) from exc
        if not isinstance(doc, dict) or doc.get("type") != STATE_TYPE:
            found = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
            raise CorruptStateError(f"{source} is not an MXNorm state (type tag {found!r})")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UnsupportedSchemaVersionError(
                f"{source} has schema_version {version!r}; this release reads only "
                f"version {SCHEMA_VERSION}"
            )
        payload = doc.get("payload")
        if not isinstance(payload, dict) or doc.get("checksum") != _checksum(payload):
            raise CorruptStateError(
                f"{source} fails its checksum: its contents were changed or damaged after "
                "it was written; restore it, or delete it to fall back to an older version"
            )
        try:
            state = cls(
                features=_check_features(payload["features"]),
                options=StateOptions(
                    alpha=payload["alpha"],
                    eps=payload["eps"],
                    var_update=payload["var_update"],
                    decay=payload["decay"],
                    zero_variance=payload["zero_variance"],
                ),
                mean=_readonly([np.nan if v is None else v for v in payload["mean"]]),
                var=_readonly([np.nan if v is None else v for v in payload["var"]]),
                totals=Moments.from_dict(payload["totals"]),
                batches_seen=int(payload["batches_seen"]),
                last_batch_id=payload["last_batch_id"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"{source} has a malformed payload: {exc}") from exc
        return state

    def summary(self) -> str:
        """A human-readable table of the state."""
        options = ", ".join(f"{k}={v}" for k, v in self.options.to_dict().items())
        head = (
            f"MXNormState: {self.n_features} features, {options}, "
            f"batches_seen={self.batches_seen}, last_batch_id={self.last_batch_id}"
        )
        width = max(7, *(len(f) for f in self.features))
        lines = [head, f"{'feature':<{width}}  {'mean':>22}  {'var':>22}  {'rows':>12}"]
        for f, m, v, n in zip(self.features, self.mean, self.var, self.count, strict=True):
            lines.append(f"{f:<{width}}  {m:>22.15g}  {v:>22.15g}  {int(n):>12d}")
        return "\n".join(lines)


def scale_of(var: Any, options: StateOptions) -> Any:
    """``sqrt(var + eps)``, or per the zero-variance policy where ``var == 0``
    (elementwise, any shape)."""
    scale = np.sqrt(var + options.eps)
    if options.zero_variance == "unit":
        scale = np.where(var == 0.0, 1.0, scale)
    elif options.zero_variance == "zero":
        scale = np.where(var == 0.0, np.inf, scale)
    return scale


def update_lanes(
    options: StateOptions, mean: Any, var: Any, totals: Fields, moments: Fields
) -> tuple[Any, Any, Fields]:
    """:meth:`MXNormState.update` on plain arrays of any shape, lane by lane (many states
    at once): the new mean, variance and totals ``(count, shift, delta, m2)``."""
    merged = merge_fields(totals, moments)
    if options.alpha is None:
        count, shift, delta, m2 = merged
        with np.errstate(invalid="ignore", divide="ignore"):
            # Moments.mean and Moments.var of the merged totals.
            return (
                np.where(count > 0, shift + delta, np.nan),
                np.where(count > 0, m2 / count, np.nan),
                merged,
            )
    ema_mean, ema_var = ema_step(options, mean, var, np.asarray(totals[0]) > 0, moments)
    return ema_mean, ema_var, merged


def ema_step(options: StateOptions, mu: Any, s2: Any, had: Any, moments: Fields) -> tuple[Any, Any]:
    """The EMA ``(mean, var)`` after one batch's moments (``alpha`` not None)."""
    count, shift, delta, m2 = moments
    in_batch = count > 0
    m = np.where(in_batch, shift + delta, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(in_batch, m2 / count, np.nan)
        # alpha = 1: log1p(-1) = -inf, so a = 1 for a batch with rows; lanes without rows
        # (0 * -inf = NaN) keep their state below.
        a = _weight(options, count)
    with np.errstate(invalid="ignore"):
        ema_mean, ema_var = _ema(options, a, mu, s2, (m, v))
    mean = np.where(in_batch, np.where(had, ema_mean, m), mu)
    var = np.where(in_batch, np.where(had, ema_var, v), s2)
    return mean, var


def _weight(options: StateOptions, count: Any) -> Any:
    """The weight ``a`` of a batch: ``alpha``, or ``1 - (1 - alpha) ** n`` (``decay='rows'``)."""
    alpha = options.alpha
    assert alpha is not None
    return -np.expm1(count * np.log1p(-alpha)) if options.decay == "rows" else alpha


def _ema(options: StateOptions, a: Any, mu: Any, s2: Any, mv: tuple[Any, Any]) -> tuple[Any, Any]:
    m, v = mv
    ema_mean = (1 - a) * mu + a * m
    if options.var_update == "mixture":
        return ema_mean, (1 - a) * (s2 + a * (m - mu) ** 2) + a * v
    return ema_mean, (1 - a) * s2 + a * v


def _first_counted(moments: Moments) -> FloatArray:
    """``mean`` then ``var`` after the first batch with data, every feature in it, on a
    state without data (any options): what :func:`update_lanes` computes for such lanes
    (the merge into empty totals gives the batch's own fields, bit for bit, and each
    feature starts at the batch's mean and variance), without its masks; the batch's
    moments become the totals as they are (immutable)."""
    k = moments.count.shape[0]
    out = np.empty(2 * k)
    np.add(moments.shift, moments.delta, out=out[:k])
    np.divide(moments.m2, moments.count, out=out[k:])
    return out


class _Hot(NamedTuple):
    """The constant arrays of a counted update and of ``normalize`` (``filled``), looked
    up once and handed from state to state: ``2 k`` zeros (the range check), ``alpha``
    and ``1 - alpha`` (the EMA of ``mean`` then ``var``; None under options that weigh
    otherwise) and ``k`` copies of ``eps``."""

    zeros: FloatArray
    alpha: FloatArray | None
    keep: FloatArray | None
    eps: FloatArray


def _hot(k: int, options: StateOptions) -> _Hot:
    alpha = options.alpha
    plain = alpha is not None and options.decay == "batch" and options.var_update == "ema"
    return _Hot(
        filled(2 * k, 0.0),
        filled(2 * k, alpha) if plain and alpha is not None else None,
        filled(2 * k, 1 - alpha) if plain and alpha is not None else None,
        filled(k, options.eps),
    )


def _update_counted(
    options: StateOptions,
    mean_var: FloatArray,
    totals: Moments,
    moments: Moments,
    hot: _Hot,
) -> tuple[FloatArray, Moments]:
    """:func:`update_lanes` when every feature has data on both sides (every batch after
    the first, as a rule): the operations :func:`merge_fields` and :func:`ema_step` apply
    to such lanes, in the same order, without their masks, so the same bits. ``mean_var``
    and the result hold ``mean`` then ``var`` (:meth:`MXNormState._stacked`), so the EMA
    of both is one numpy call per operation."""
    na, shift_a, delta_a, m2_a = totals.count, totals.shift, totals.delta, totals.m2
    nb, shift_b, delta_b, m2_b = moments.count, moments.shift, moments.delta, moments.m2
    n = na + nb
    # merge_fields' operations in its order, in place on our own temporaries (addition
    # commutes bit for bit, so ``t += a`` is ``a + t``).
    d = shift_b - shift_a
    d += delta_b
    d -= delta_a
    w = nb / n
    delta = d * w
    delta += delta_a
    m2 = d * d
    m2 *= na
    m2 *= w
    m2 += m2_a + m2_b
    writeable(n, False)
    writeable(delta, False)
    writeable(m2, False)
    merged = counted_moments(n, shift_a, delta, m2)
    k = n.shape[0]
    out = np.empty(2 * k)
    alpha = options.alpha
    if alpha is None:
        np.add(shift_a, delta, out=out[:k])
        np.divide(m2, n, out=out[k:])
        return out, merged
    # The batch's mean and variance, then the EMA ``(1 - a) * old + a * new`` of both.
    np.add(shift_b, delta_b, out=out[:k])
    np.divide(m2_b, nb, out=out[k:])
    a: Any = alpha
    if options.decay == "rows":
        with np.errstate(divide="ignore"):  # alpha = 1: log1p(-1) = -inf, a = 1
            a = _weight(options, nb)
    if options.var_update == "mixture":
        mixed = _ema(options, a, mean_var[:k], mean_var[k:], (out[:k], out[k:]))
        return np.concatenate(mixed), merged
    if hot.alpha is None or hot.keep is None:  # decay="rows"
        a = np.concatenate((a, a))  # the weight of each feature, for its mean and its var
        keep = 1 - a
    else:  # alpha and 1 - alpha as arrays (filled: faster than Python numbers, same bits)
        a, keep = hot.alpha, hot.keep
    out *= a
    ema: FloatArray = keep * mean_var
    ema += out
    return ema, merged


def _checksum(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _batch_name(batch_id: int | None) -> str:
    return "the batch" if batch_id is None else f"batch {batch_id}"


def check_range(
    features: tuple[str, ...], mean: FloatArray, var: FloatArray, seen: Any, which: str
) -> None:
    """Refuse a state of inf or NaN where a feature has values (``seen``): finite values
    spread over more than ~1.3e154 have a variance beyond float64, and such a state would
    normalize every later row to NaN or 0 without a word."""
    bad = seen & ~(np.isfinite(mean) & np.isfinite(var))
    if bad.any():
        names = [f for f, b in zip(features, bad, strict=True) if b]
        raise ValueRangeError(
            f"feature(s) {names}: the values of {which} overflow float64 in their mean "
            "or variance (values spread over more than about 1e154 have a variance "
            "beyond 1.8e308); the state was not updated. Scale the feature(s) down "
            "(e.g. multiply by 1e-150) or remove the outliers"
        )
