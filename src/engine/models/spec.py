"""The feature spec and risk bands a model bundle declares in its manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError
from engine.labels import BAND_NAMES as BAND_NAMES  # the names RiskBands gives thresholds to


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One model input column."""

    name: str
    kind: str = "numeric"  # "numeric" or "categorical" (integer codes into `categories`)
    categories: tuple[str, ...] = ()
    description: str = ""
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "kind": self.kind}
        if self.categories:
            out["categories"] = list(self.categories)
        if self.description:
            out["description"] = self.description
        return out

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> FeatureDef:
        try:
            fd = FeatureDef(
                name=str(raw["name"]),
                kind=str(raw.get("kind", "numeric")),
                categories=tuple(str(c) for c in raw.get("categories", ())),
                description=str(raw.get("description", "")),
                dtype=str(raw.get("dtype", "float32")),
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest feature entry is malformed: {raw!r}") from exc
        if fd.kind not in ("numeric", "categorical"):
            raise BundleError(f"feature {fd.name!r}: unknown kind {fd.kind!r}")
        if fd.dtype != "float32":
            raise BundleError(f"feature {fd.name!r}: dtype must be float32, not {fd.dtype!r}")
        if fd.kind == "categorical" and not fd.categories:
            raise BundleError(f"feature {fd.name!r}: categorical feature without categories")
        return fd


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Model input columns, in the order the model expects them."""

    features: tuple[FeatureDef, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def __len__(self) -> int:
        return len(self.features)

    def get(self, name: str) -> FeatureDef:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.features]

    @staticmethod
    def from_json(raw: Sequence[Mapping[str, Any]]) -> FeatureSpec:
        spec = FeatureSpec(tuple(FeatureDef.from_json(r) for r in raw))
        if not spec.features:
            raise BundleError("manifest declares no features")
        if len(set(spec.names)) != len(spec.names):
            raise BundleError("manifest declares a feature twice")
        return spec


@dataclass(frozen=True, slots=True)
class RiskBands:
    """Lower probability bounds of MEDIUM, HIGH and CRITICAL (LOW starts at 0)."""

    thresholds: tuple[float, float, float]
    _edges: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = self.thresholds
        if len(t) != 3 or not all(0.0 < x < 1.0 for x in t) or not (t[0] < t[1] < t[2]):
            raise BundleError(f"risk band thresholds must rise strictly inside (0, 1): {t}")
        object.__setattr__(self, "_edges", np.asarray(t, dtype=np.float64))

    @property
    def edges(self) -> npt.NDArray[np.float64]:
        """The thresholds as float64, rising, for `band_of` (compiled callers)."""
        return self._edges

    def assign(self, probabilities: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int32]:
        """Band numbers (tradescore.v1.RiskBand: LOW=1 .. CRITICAL=4) for each probability."""
        return (np.searchsorted(self._edges, probabilities, side="right") + 1).astype(np.int32)

    def to_json(self) -> dict[str, float]:
        return dict(zip(BAND_NAMES[1:], self.thresholds, strict=True))

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> RiskBands:
        try:
            values = tuple(float(raw[name]) for name in BAND_NAMES[1:])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest risk_bands must give {BAND_NAMES[1:]}: {raw!r}") from exc
        return RiskBands((values[0], values[1], values[2]))
