"""Beam coders for the numpy values: ``Moments`` as four float64 arrays and
``MXNormState`` as its checksummed JSON (the state file's bytes), never pickle."""

from __future__ import annotations

import struct
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders.typecoders import registry

from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState

__all__ = ["MomentsCoder", "StateCoder", "decode_moments", "encode_moments"]

_HEADER = struct.Struct("<I")


def encode_moments(m: Moments) -> bytes:
    """``count, shift, delta, m2`` as little-endian float64, after the feature count."""
    return _HEADER.pack(m.n_features) + np.concatenate(m.fields()).astype("<f8").tobytes()


def decode_moments(data: bytes) -> Moments:
    (k,) = _HEADER.unpack_from(data)
    flat = np.frombuffer(data, dtype="<f8", offset=_HEADER.size).astype(np.float64)
    count, shift, delta, m2 = flat.reshape(4, k)
    return Moments(count, shift, delta, m2)


class MomentsCoder(beam.coders.Coder):  # type: ignore[misc]
    """A :class:`Moments` as its four float64 arrays (bit for bit)."""

    def encode(self, value: Moments) -> bytes:
        return encode_moments(value)

    def decode(self, encoded: bytes) -> Moments:
        return decode_moments(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return Moments


class StateCoder(beam.coders.Coder):  # type: ignore[misc]
    """An :class:`MXNormState` as :meth:`MXNormState.to_json` (floats round-trip exactly)."""

    def encode(self, value: MXNormState) -> bytes:
        return value.to_json().encode("utf-8")

    def decode(self, encoded: bytes) -> MXNormState:
        return MXNormState.from_json(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return MXNormState


registry.register_coder(Moments, MomentsCoder)
registry.register_coder(MXNormState, StateCoder)
