"""Raw trades -> model input matrix; the one definition for training and serving.

`CATALOG` names every feature the engine knows how to compute; the formulas
themselves are compiled, in `engine.features.kernels.compute_rows`. A bundle's
manifest picks features from the catalog, in its own order, with its own
vocabularies for the categorical ones; `FeaturePlan` checks that choice once,
when a bundle is loaded, and then computes float32 [n, F] matrices from
`TradeRows` with no per-trade Python.

Missing stays missing: an optional signal the caller left unset and the
reference tables do not know becomes NaN, which LightGBM (and the exported
ONNX trees) route down the branch learned for missing values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError
from engine.features import kernels as kn
from engine.features.columns import ASSET_CLASSES, SIDES, Str, TradeColumns
from engine.features.rows import (
    K_CP_ROW,
    K_CURRENCY_CODE,
    K_FX_ROW,
    K_INSTRUMENT_ROW,
    K_VENUE_CODE,
    LOOKUP_FIELDS,
    TradeRows,
    rows_from_columns,
)
from engine.models.reference import ReferenceTables
from engine.models.spec import FeatureDef, FeatureSpec

F32 = npt.NDArray[np.float32]

#: category used for venue/currency values the training data never saw
OTHER = "OTHER"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    feature: int  # its number in engine.features.kernels (F_*)
    kind: str = "numeric"
    description: str = ""
    #: categories fixed by the contract (enums); None: learnt from data, OTHER last
    fixed_categories: tuple[str, ...] | None = None


def _fixed_categories(table: dict[int, str]) -> tuple[str, ...]:
    return tuple(table[k] for k in sorted(table))


#: every feature the engine can compute; the formulas are in `kernels.compute_rows`
CATALOG: dict[str, CatalogEntry] = {
    "asset_class": CatalogEntry(
        kn.F_ASSET_CLASS,
        "categorical",
        "asset class (code = index in categories)",
        _fixed_categories(ASSET_CLASSES),
    ),
    "side": CatalogEntry(kn.F_SIDE, "categorical", "buy / sell / sell short", _fixed_categories(SIDES)),
    "settlement_venue": CatalogEntry(
        kn.F_VENUE, "categorical", "settlement venue / CSD; unseen venues are OTHER"
    ),
    "currency": CatalogEntry(kn.F_CURRENCY, "categorical", "trade currency; unseen currencies are OTHER"),
    "log_notional_usd": CatalogEntry(
        kn.F_LOG_NOTIONAL_USD,
        description="log10 of quantity x price in USD (missing when the currency has no FX rate)",
    ),
    "log_quantity_to_adv": CatalogEntry(
        kn.F_LOG_QUANTITY_TO_ADV, description="log10 of quantity / instrument average daily volume"
    ),
    "log_adv": CatalogEntry(
        kn.F_LOG_ADV,
        description="log10 of instrument average daily volume (request, else instrument table)",
    ),
    "inventory_ratio": CatalogEntry(
        kn.F_INVENTORY_RATIO, description="securities available / quantity to deliver"
    ),
    "on_loan_recall_pending": CatalogEntry(
        kn.F_ON_LOAN, description="1 when the securities are on loan with a recall pending"
    ),
    "ssi_matched": CatalogEntry(kn.F_SSI, description="1 when standing settlement instructions are matched"),
    "counterparty_fail_rate": CatalogEntry(
        kn.F_CP_FAIL_RATE,
        description="counterparty historical fail rate (request, else counterparty table)",
    ),
    "counterparty_log_trades": CatalogEntry(
        kn.F_CP_LOG_TRADES,
        description="log10(1 + trades) in the counterparty table (how much history backs its rate)",
    ),
    "instrument_fail_rate": CatalogEntry(
        kn.F_INSTRUMENT_FAIL_RATE, description="instrument historical fail rate from the instrument table"
    ),
    "settlement_cycle_days": CatalogEntry(
        kn.F_CYCLE_DAYS, description="business days from trade date to settlement date (T+n)"
    ),
    "trade_weekday": CatalogEntry(kn.F_WEEKDAY, description="weekday of the trade date, Monday = 0"),
}
if sorted(e.feature for e in CATALOG.values()) != list(range(kn.N_FEATURES)):
    raise RuntimeError("CATALOG must name every kernel feature exactly once")


def default_spec(
    venues: npt.ArrayLike, currencies: npt.ArrayLike, names: tuple[str, ...] | None = None
) -> FeatureSpec:
    """A spec over `names` (default: the whole catalog) with vocabularies from data."""
    learnt = {
        "settlement_venue": tuple(sorted({str(v) for v in np.asarray(venues).tolist()} - {OTHER})),
        "currency": tuple(sorted({str(v) for v in np.asarray(currencies).tolist()} - {OTHER})),
    }
    defs = []
    for name in names or tuple(CATALOG):
        entry = CATALOG[name]
        cats: tuple[str, ...] = ()
        if entry.kind == "categorical":
            cats = entry.fixed_categories if entry.fixed_categories is not None else (*learnt[name], OTHER)
        defs.append(FeatureDef(name, entry.kind, cats, entry.description))
    return FeatureSpec(tuple(defs))


class FeaturePlan:
    """A bundle's feature spec checked against the catalog, ready to compute.

    It also owns what turns text into numbers for this bundle: the reference
    tables' keys and the learnt vocabularies (`index`), used by the dict look-ups
    of table input here and by the compiled ones of `engine.scoring.wire`.
    """

    def __init__(self, spec: FeatureSpec, refs: ReferenceTables) -> None:
        self.spec = spec
        self.refs = refs
        vocab: dict[str, tuple[str, ...]] = {"settlement_venue": (), "currency": ()}
        columns = np.full(kn.N_FEATURES, -1, dtype=np.int64)
        for j, fd in enumerate(spec.features):
            entry = CATALOG.get(fd.name)
            if entry is None:
                raise BundleError(f"feature {fd.name!r} is not one the engine can compute")
            if entry.kind != fd.kind:
                raise BundleError(f"feature {fd.name!r} must be {entry.kind}, manifest says {fd.kind}")
            if entry.fixed_categories is not None and fd.categories != entry.fixed_categories:
                raise BundleError(f"feature {fd.name!r}: categories differ from the contract's enum")
            if entry.kind == "categorical" and entry.fixed_categories is None:
                if fd.categories[-1:] != (OTHER,) or OTHER in fd.categories[:-1]:
                    raise BundleError(f"feature {fd.name!r}: categories must end with {OTHER}")
                vocab[fd.name] = fd.categories[:-1]
            if columns[entry.feature] >= 0:
                raise BundleError(f"feature {fd.name!r} appears twice in the manifest")
            columns[entry.feature] = j
        self.width = len(spec.features)
        self.columns = columns
        #: K_* column -> the keys it is resolved against (position = value)
        self.keys: dict[int, tuple[str, ...]] = {
            K_CP_ROW: tuple(refs.counterparties.keys.tolist()),
            K_INSTRUMENT_ROW: tuple(refs.instruments.keys.tolist()),
            K_FX_ROW: tuple(refs.fx.keys.tolist()),
            K_VENUE_CODE: vocab["settlement_venue"],
            K_CURRENCY_CODE: vocab["currency"],
        }
        self.index: dict[int, dict[str, int]] = {
            K_CP_ROW: refs.counterparties.index,
            K_INSTRUMENT_ROW: refs.instruments.index,
            K_FX_ROW: refs.fx.index,
            K_VENUE_CODE: {key: i for i, key in enumerate(vocab["settlement_venue"])},
            K_CURRENCY_CODE: {key: i for i, key in enumerate(vocab["currency"])},
        }
        self.others = np.array([len(vocab["settlement_venue"]), len(vocab["currency"])], dtype=np.int64)
        empty = np.zeros(0, dtype=np.float64)

        def ref(table: str, column: str) -> npt.NDArray[np.float64]:
            values = getattr(refs, table).columns.get(column)
            return empty if values is None else np.ascontiguousarray(values, dtype=np.float64)

        self.refs_values = (
            ref("counterparties", "fail_rate"),
            ref("counterparties", "trades"),
            ref("instruments", "adv"),
            ref("instruments", "fail_rate"),
            ref("fx", "usd_per_unit"),
        )

    def rows(self, cols: TradeColumns) -> TradeRows:
        """`TradeRows` for table trades, resolved against this bundle's tables and vocabularies."""
        text: dict[int, Str] = {c: getattr(cols, name) for c, name in LOOKUP_FIELDS.items()}
        return rows_from_columns(cols, {c: (self.index[c], values) for c, values in text.items()})

    def compute_rows(self, rows: TradeRows) -> F32:
        """The float32 [n, F] model input for `rows` (which must have passed validation)."""
        out = np.empty((len(rows), self.width), dtype=np.float32)
        kn.compute_rows(rows.x, rows.k, self.refs_values, self.others, self.columns, out)
        return out

    def compute(self, cols: TradeColumns) -> F32:
        """The float32 [n, F] model input for table trades (which must have passed validation)."""
        return self.compute_rows(self.rows(cols))
