"""Raw trades -> model input matrix, vectorised; the one definition for training and serving.

`CATALOG` lists every feature the engine knows how to compute. A bundle's
manifest picks features from it, in its own order, with its own vocabularies
for the categorical ones; `FeaturePlan` checks that choice once, when a bundle
is loaded, and then computes float32 [n, F] matrices with no per-trade Python.

Missing stays missing: an optional signal the caller left unset and the
reference tables do not know becomes NaN, which LightGBM (and the exported
ONNX trees) route down the branch learned for missing values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError
from engine.features.columns import ASSET_CLASSES, SIDES, TradeColumns
from engine.models.reference import ReferenceTables
from engine.models.spec import FeatureDef, FeatureSpec

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: category used for venue/currency values the training data never saw
OTHER = "OTHER"


class _Context:
    """One computation's inputs, with each reference look-up done once and shared."""

    __slots__ = ("cols", "refs", "vocab", "_rows", "_values")

    def __init__(
        self,
        cols: TradeColumns,
        refs: ReferenceTables,
        vocab: dict[str, dict[str, float]],  # feature name -> {category: code} (without OTHER)
    ) -> None:
        self.cols = cols
        self.refs = refs
        self.vocab = vocab
        self._rows: dict[str, tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]] = {}
        self._values: dict[tuple[str, str], F64] = {}

    def ref(self, table: str, column: str) -> F64:
        """`column` of reference `table` for each trade (NaN where unknown), looked up once."""
        out = self._values.get((table, column))
        if out is None:
            if table not in self._rows:
                self._rows[table] = getattr(self.refs, table).positions(_REF_KEYS[table](self.cols))
            pos, found = self._rows[table]
            values = getattr(self.refs, table).columns[column]
            out = np.where(found, values[pos], np.nan) if values.size else np.full(pos.shape, np.nan)
            self._values[(table, column)] = out
        return out

    def adv(self) -> F64:
        given = self.cols.instrument_adv
        return np.where(np.isnan(given), self.ref("instruments", "adv"), given)


#: which trade column keys each reference table
_REF_KEYS: dict[str, Callable[[TradeColumns], npt.NDArray[np.str_]]] = {
    "counterparties": lambda t: t.counterparty_id,
    "instruments": lambda t: t.instrument_id,
    "fx": lambda t: t.currency,
}


def _log10_positive(x: F64) -> F64:
    """log10 where x > 0, NaN elsewhere (NaN in, NaN out); no warnings to silence."""
    positive = x > 0
    return np.where(positive, np.log10(np.where(positive, x, 1.0)), np.nan)


def _category(name: str, column: Callable[[TradeColumns], npt.NDArray[np.str_]]) -> Callable[[_Context], F64]:
    def compute(c: _Context) -> F64:
        codes = c.vocab[name]  # category -> code; OTHER is the last code
        other = float(len(codes))
        values = column(c.cols).tolist()
        return np.fromiter(map(codes.get, values, repeat(other)), dtype=np.float64, count=len(values))

    return compute


def _cycle_days(c: _Context) -> F64:
    cols = c.cols
    has_date = ~np.isnat(cols.settlement_date) & ~np.isnat(cols.trade_date)
    out = cols.settlement_cycle_days.copy()
    if has_date.any():
        out[has_date] = np.busday_count(cols.trade_date[has_date], cols.settlement_date[has_date])
    return out


def _weekday(c: _Context) -> F64:
    days = c.cols.trade_date.astype("datetime64[D]").astype(np.int64)
    # 1970-01-01 was a Thursday (weekday 3)
    return np.where(np.isnat(c.cols.trade_date), np.nan, (days + 3) % 7).astype(np.float64)


def _fixed_categories(table: dict[int, str]) -> tuple[str, ...]:
    return tuple(table[k] for k in sorted(table))


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    compute: Callable[[_Context], F64]
    kind: str = "numeric"
    description: str = ""
    #: categories fixed by the contract (enums); None: learnt from data, OTHER last
    fixed_categories: tuple[str, ...] | None = None


CATALOG: dict[str, CatalogEntry] = {
    "asset_class": CatalogEntry(
        lambda c: c.cols.asset_class.astype(np.float64) - 1.0,
        "categorical",
        "asset class (code = index in categories)",
        _fixed_categories(ASSET_CLASSES),
    ),
    "side": CatalogEntry(
        lambda c: c.cols.side.astype(np.float64) - 1.0,
        "categorical",
        "buy / sell / sell short",
        _fixed_categories(SIDES),
    ),
    "settlement_venue": CatalogEntry(
        _category("settlement_venue", lambda t: t.settlement_venue),
        "categorical",
        "settlement venue / CSD; unseen venues are OTHER",
    ),
    "currency": CatalogEntry(
        _category("currency", lambda t: t.currency),
        "categorical",
        "trade currency; unseen currencies are OTHER",
    ),
    "log_notional_usd": CatalogEntry(
        lambda c: _log10_positive(c.cols.quantity * c.cols.price * c.ref("fx", "usd_per_unit")),
        description="log10 of quantity x price in USD (missing when the currency has no FX rate)",
    ),
    "log_quantity_to_adv": CatalogEntry(
        lambda c: _log10_positive(c.cols.quantity / c.adv()),
        description="log10 of quantity / instrument average daily volume",
    ),
    "log_adv": CatalogEntry(
        lambda c: _log10_positive(c.adv()),
        description="log10 of instrument average daily volume (request, else instrument table)",
    ),
    "inventory_ratio": CatalogEntry(
        lambda c: np.minimum(c.cols.inventory_ratio, 1e6),
        description="securities available / quantity to deliver",
    ),
    "on_loan_recall_pending": CatalogEntry(
        lambda c: c.cols.on_loan_recall_pending,
        description="1 when the securities are on loan with a recall pending",
    ),
    "ssi_matched": CatalogEntry(
        lambda c: c.cols.ssi_matched,
        description="1 when standing settlement instructions are matched",
    ),
    "counterparty_fail_rate": CatalogEntry(
        lambda c: np.where(
            np.isnan(c.cols.counterparty_fail_rate),
            c.ref("counterparties", "fail_rate"),
            c.cols.counterparty_fail_rate,
        ),
        description="counterparty historical fail rate (request, else counterparty table)",
    ),
    "counterparty_log_trades": CatalogEntry(
        lambda c: np.log10(1.0 + c.ref("counterparties", "trades")),
        description="log10(1 + trades) in the counterparty table (how much history backs its rate)",
    ),
    "instrument_fail_rate": CatalogEntry(
        lambda c: c.ref("instruments", "fail_rate"),
        description="instrument historical fail rate from the instrument table",
    ),
    "settlement_cycle_days": CatalogEntry(
        _cycle_days, description="business days from trade date to settlement date (T+n)"
    ),
    "trade_weekday": CatalogEntry(_weekday, description="weekday of the trade date, Monday = 0"),
}


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
    """A bundle's feature spec checked against the catalog, ready to compute."""

    def __init__(self, spec: FeatureSpec, refs: ReferenceTables) -> None:
        self.spec = spec
        self.refs = refs
        self._entries: list[CatalogEntry] = []
        self._vocab: dict[str, dict[str, float]] = {}
        for fd in spec.features:
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
                self._vocab[fd.name] = {c: float(j) for j, c in enumerate(fd.categories[:-1])}
            self._entries.append(entry)

    def compute(self, cols: TradeColumns) -> F32:
        """The float32 [n, F] model input for `cols` (which must have passed validation)."""
        ctx = _Context(cols, self.refs, self._vocab)
        out = np.empty((len(cols), len(self._entries)), dtype=np.float32)
        for j, entry in enumerate(self._entries):
            out[:, j] = entry.compute(ctx)
        return out
