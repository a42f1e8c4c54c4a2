"""`engine generate-extracts`: two systems' extracts of the same trades, with planted breaks and labels.

System A ("trading") writes Parquet; system B ("risk") writes CSV (or Parquet) with other column
names and types: `qty` (float) is `Quantity` (integer), `amount` in major units is `AmountMinor`
in cents, the ISO text `trade_date` is a `TradeDate` timestamp, `updated_at` (a UTC timestamp) is
`LastModified` in epoch milliseconds, `status` ("settled") is `State` ("SETTLED "), and B's names
sometimes carry doubled spaces. Both carry the composite key (book, trade ref).

B replicates A with a healthy feed's lag (about a second, either way; a fifth carry A's own
time). Breaks are planted at `engine.training.pairs.BREAK_MIX`'s shares, the classes the pair
model knows (`/work/shared/DOMAIN.md`, "Reconciliation breaks"): stale copies (minutes behind,
old amount), partial fills on one side, status drift, static-data typos, records missing on one
side, fat fingers, duplicate bookings (k x the totals on one side); plus keys booked twice on
one side (`duplicate_key`: a second row with the same key). Hotspots multiply the break rate of
chosen dimension values (`desk=RATES-NY:4`), so the report's ranking can be checked.

Output folder: `a/part-NNNNN.parquet`, `b/part-NNNNN.csv`, `truth/part-NNNNN.parquet` (per record
and occurrence: the key, the planted class, the broken side), `truth.json` (seed, shares,
hotspots) and `mapping.yaml` (the mapping `engine discover` needs for these two extracts).
Generated chunk by chunk (`chunk_rows`, each chunk its own seed), so memory does not grow with
`rows`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.batch.errors import UsageError
from engine.batch.options import DEFAULT_EXTRACTS_SEED, DIMENSIONS

# the names and addresses of the pair model's synthetic history: the same vocabulary
from engine.training.pairs import _CITIES, _FORMS, _KINDS, _STREETS, _SUFFIXES, _WORDS, BREAK_MIX

Printer = Callable[[str], None]
Str = npt.NDArray[np.str_]
DUPLICATE_KEY_SHARE = 0.002
CLASSES = ("consistent", *BREAK_MIX, "duplicate_key")
START_DAY = np.datetime64("2026-09-01")
BUSINESS_DAYS = 60

MAPPING_YAML = """\
# engine discover's mapping for the extracts engine generate-extracts writes:
# system A (trading, Parquet) against system B (risk, CSV), named and typed differently.
a:
  name: trading
  updated_at: updated_at
b:
  name: risk
  updated_at: {column: LastModified, unit: ms}
key:
  - {name: book, a: book, b: BookCode}
  - {name: trade_ref, a: trade_ref, b: TradeId}
fields:
  - {name: status, a: status, b: State, type: text, normalise: [trim, lower], role: status}
  - {name: quantity, a: qty, b: Quantity, type: number, role: quantity}
  - {name: amount, a: amount, b: {column: AmountMinor, scale: 0.01}, type: number, abs_tol: 0.005,
     role: amount}
  - {name: counterparty_name, a: cpty_name, b: CptyName, type: text, normalise: [trim, collapse_whitespace],
     role: name}
  - {name: counterparty_address, a: cpty_address, b: CptyAddress, type: text,
     normalise: [trim, collapse_whitespace], role: address}
  - {name: trade_date, a: trade_date, b: TradeDate, type: date}
dimensions:
  - {name: desk, a: desk}
  - {name: counterparty, a: counterparty_id, b: CptyId}
  - {name: instrument, a: instrument_id, b: Isin}
  - {name: source_system, b: SourceSystem}
  - {name: business_date, field: trade_date}
business_date: business_date
"""

_DESKS = (
    "EQ-LDN",
    "EQ-NY",
    "EQ-HK",
    "RATES-LDN",
    "RATES-NY",
    "CREDIT-LDN",
    "CREDIT-NY",
    "FX-LDN",
    "FX-NY",
    "FX-SG",
    "EM-LDN",
    "MUNI-NY",
)
_SYSTEMS = ("MUREX", "CALYPSO", "SUMMIT", "ORCHESTRADE")
_STATUSES = ("open", "settled", "pending", "active", "closed", "suspended")
_STATUS_P = (0.3, 0.3, 0.15, 0.15, 0.07, 0.03)
_DRIFT = np.array([4, 2, 1, 4, 3, 3])  # index of the drifted status: open->closed, settled->pending, ...
_SHORT = (
    ("Limited", "Ltd"),
    ("Corporation", "Corp"),
    ("Street", "St"),
    ("Avenue", "Ave"),
    ("Road", "Rd"),
    ("Partners", "Ptnrs"),
    ("Management", "Mgmt"),
)


@dataclass(frozen=True, slots=True)
class Hotspot:
    """A dimension value whose break rate is `factor` times the base rate (every class)."""

    dimension: str
    value: str
    factor: float

    @staticmethod
    def parse(text: str) -> Hotspot:
        try:
            dim, rest = text.split("=", 1)
            value, factor = rest.rsplit(":", 1)
            spot = Hotspot(dim.strip(), value.strip(), float(factor))
        except ValueError:
            raise UsageError(
                f"--hotspot {text!r}: write DIMENSION=VALUE:FACTOR, e.g. desk=RATES-NY:4"
            ) from None
        if spot.dimension not in DIMENSIONS:
            raise UsageError(f"--hotspot {text!r}: dimension must be one of {', '.join(DIMENSIONS)}")
        if not 1.0 <= spot.factor <= 20.0:
            raise UsageError(f"--hotspot {text!r}: factor must be in [1, 20]")
        return spot


@dataclass(frozen=True, slots=True)
class Universe:
    """What every chunk draws from: books (with desk and source system), counterparties, instruments."""

    books: Str
    book_desk: Str
    book_system: Str
    cpty: Str
    cpty_weight: npt.NDArray[np.float64]
    cpty_name: Str
    cpty_address: Str
    isin: Str
    days: npt.NDArray[np.datetime64]

    @staticmethod
    def make(seed: int) -> Universe:
        rng = np.random.default_rng([seed, 0])
        books = np.array([f"BK{i:03d}" for i in range(1, 121)])
        n_cp = 300

        def pick(options: Sequence[str], n: int) -> Str:
            chosen: Str = np.asarray(options)[rng.integers(len(options), size=n)]
            return chosen

        names = np.char.add(
            np.char.add(np.char.add(pick(_WORDS, n_cp), " "), np.char.add(pick(_WORDS, n_cp), " ")),
            np.char.add(np.char.add(pick(_KINDS, n_cp), " "), pick(_FORMS, n_cp)),
        )
        numbers = rng.integers(1, 999, size=n_cp).astype(str)
        streets = np.char.add(np.char.add(pick(_STREETS, n_cp), " "), pick(_SUFFIXES, n_cp))
        addresses = np.char.add(
            np.char.add(np.char.add(numbers, " "), streets), np.char.add(", ", pick(_CITIES, n_cp))
        )
        weight = 1.0 / np.arange(1, n_cp + 1) ** 0.8  # a few counterparties trade most
        all_days = START_DAY + np.arange(BUSINESS_DAYS * 7 // 5 + 7)
        weekdays = (all_days.astype("datetime64[D]").view("int64") - 4) % 7  # 1970-01-01 was a Thursday
        days = all_days[weekdays < 5][:BUSINESS_DAYS]
        return Universe(
            books=books,
            book_desk=np.asarray(_DESKS)[np.arange(len(books)) % len(_DESKS)],
            book_system=np.asarray(_SYSTEMS)[rng.integers(len(_SYSTEMS), size=len(books))],
            cpty=np.array([f"CP{i:04d}" for i in range(1, n_cp + 1)]),
            cpty_weight=weight / weight.sum(),
            cpty_name=names,
            cpty_address=addresses,
            isin=np.array([f"US{i:09d}{i % 10}" for i in rng.choice(10**9, size=2000, replace=False)]),
            days=days,
        )


def _typo(rng: np.random.Generator, text: str) -> str:
    """A plausible static-data slip: an abbreviation, else one dropped or doubled character."""
    for full, short in _SHORT:
        if f" {full}" in text and rng.random() < 0.6:
            return text.replace(full, short, 1)
    at = int(rng.integers(1, max(2, len(text) - 1)))
    return text[:at] + text[at + 1 :] if rng.random() < 0.5 else text[:at] + text[at] + text[at:]


def _labels(rng: np.random.Generator, n: int, boost: npt.NDArray[np.float64]) -> Str:
    """A class per record: each break class at its share times the record's hotspot factor."""
    shares = np.array([*BREAK_MIX.values(), DUPLICATE_KEY_SHARE])
    cum = np.cumsum(shares)[None, :] * boost[:, None]  # [n, classes]
    u = rng.random(n)
    which = (u[:, None] >= cum).sum(axis=1)  # 0..len(shares): index among breaks, len = consistent
    names = np.array([*BREAK_MIX, "duplicate_key", "consistent"])
    labels: Str = names[which]
    return labels


def _chunk(
    u: Universe, start: int, n: int, seed: int, chunk: int, hotspots: Sequence[Hotspot]
) -> dict[str, dict[str, np.ndarray]]:
    """One chunk of records: A's and B's rows and the truth, as column arrays."""
    rng = np.random.default_rng([seed, 1, chunk])
    ids = np.arange(start, start + n)
    book = rng.integers(len(u.books), size=n)
    cp = rng.choice(len(u.cpty), size=n, p=u.cpty_weight)
    inst = rng.integers(len(u.isin), size=n)
    day = rng.integers(len(u.days), size=n)
    values = {
        "desk": u.book_desk[book],
        "counterparty": u.cpty[cp],
        "instrument": u.isin[inst],
        "source_system": u.book_system[book],
        "business_date": u.days[day].astype(str),
    }
    boost = np.ones(n)
    for spot in hotspots:
        boost[values[spot.dimension] == spot.value] *= spot.factor
    label = _labels(rng, n, boost)
    side = rng.integers(2, size=n)  # the side a break is planted on
    qty = np.round(rng.lognormal(7.0, 1.5, n)).clip(1, None)
    price = np.round(rng.lognormal(3.5, 1.0, n), 2).clip(0.01, None)
    amount = np.round(qty * price, 2)
    status = rng.choice(len(_STATUSES), size=n, p=_STATUS_P)
    t_a = (
        u.days[day].astype("datetime64[s]").astype(np.int64) + 8 * 3600 + rng.uniform(0, 10 * 3600, n)
    ).round(3)
    t_b = t_a + rng.exponential(0.8, n) * rng.choice([-1.0, 1.0], n)
    same = rng.random(n) < 0.2
    t_b[same] = t_a[same]
    q = np.stack([qty, qty], axis=1)
    amt = np.stack([amount, amount], axis=1)
    st = np.stack([status, status], axis=1)
    ts = np.stack([t_a, t_b], axis=1)
    name = np.stack([u.cpty_name[cp], u.cpty_name[cp]], axis=1).astype(object)
    addr = np.stack([u.cpty_address[cp], u.cpty_address[cp]], axis=1).astype(object)
    present = np.ones((n, 2), dtype=np.bool_)
    rows = np.arange(n)
    other = 1 - side

    def planted(cls: str) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        m = np.flatnonzero(label == cls)
        return m, side[m], other[m]

    m, s, o = planted("stale_copy")  # the stale side lags by minutes and holds an older amount
    ts[m, s] = ts[m, o] - rng.uniform(30, 900, m.size)
    amt[m, s] = np.round(
        amount[m] * (1 + rng.choice([-1.0, 1.0], m.size) * rng.uniform(0.001, 0.05, m.size)), 2
    )
    moved = m[rng.random(m.size) < 0.5]
    q[moved, side[moved]] = np.maximum(
        1.0, qty[moved] + rng.choice([-1.0, 1.0], moved.size) * np.maximum(1.0, np.round(qty[moved] * 0.1))
    )
    m, s, _ = planted("partial_fill")  # a fill booked on one side only
    q[m, s] = np.maximum(1.0, np.round(qty[m] * rng.uniform(0.1, 0.9, m.size)))
    amt[m, s] = np.round(amount[m] * q[m, s] / qty[m], 2)
    m, s, _ = planted("status_drift")
    st[m, s] = _DRIFT[status[m]]
    m, s, _ = planted("static_data")
    on_name = rng.random(m.size) < 0.6
    for i, sd, nm in zip(m.tolist(), s.tolist(), on_name.tolist(), strict=True):
        target = name if nm else addr
        target[i, sd] = _typo(rng, str(target[i, sd]))
    m, s, _ = planted("missing")
    present[m, s] = False
    m, s, _ = planted("fat_finger")
    amt[m, s] = np.round(amount[m] * rng.choice([10.0, 100.0, 1000.0, 0.01], m.size), 2)
    m, s, o = planted("duplicate")  # booked twice (now and then three times): k x the totals, updated later
    k = np.where(rng.random(m.size) < 0.85, 2.0, 3.0)
    amt[m, s] = np.round(amount[m] * k, 2)
    q[m, s] = qty[m] * k
    ts[m, s] = ts[m, o] + rng.uniform(1, 600, m.size)
    dup, dup_side = planted("duplicate_key")[:2]  # the same key booked a second time on one side
    spaced = rng.random(n) < 0.03  # B's front end doubles a space now and then: not a break
    name[spaced, 1] = np.char.replace(name[spaced, 1].astype(str), " ", "  ", count=1)

    trade_ref = np.char.add("T", np.char.zfill(ids.astype(str), 10))
    books = u.books[book]
    a_rows = np.concatenate([rows[present[:, 0]], dup[dup_side == 0]])
    b_rows = np.concatenate([rows[present[:, 1]], dup[dup_side == 1]])
    second = np.concatenate(
        [np.zeros(int(present[:, 0].sum()), bool), np.ones(int((dup_side == 0).sum()), bool)]
    )
    second_b = np.concatenate(
        [np.zeros(int(present[:, 1].sum()), bool), np.ones(int((dup_side == 1).sum()), bool)]
    )
    a_order, b_order = np.argsort(a_rows, kind="stable"), np.argsort(b_rows, kind="stable")
    a_rows, second = a_rows[a_order], second[a_order]
    b_rows, second_b = b_rows[b_order], second_b[b_order]
    later = 5.0 + rng.uniform(0, 60, n)  # a duplicate row is a later booking of the same record

    a = {
        "trade_ref": trade_ref[a_rows],
        "book": books[a_rows],
        "desk": values["desk"][a_rows],
        "counterparty_id": values["counterparty"][a_rows],
        "instrument_id": values["instrument"][a_rows],
        "trade_date": values["business_date"][a_rows],
        "qty": q[a_rows, 0],
        "amount": amt[a_rows, 0],
        "status": np.asarray(_STATUSES)[st[a_rows, 0]],
        "cpty_name": name[a_rows, 0].astype(str),
        "cpty_address": addr[a_rows, 0].astype(str),
        "updated_at": ((ts[a_rows, 0] + np.where(second, later[a_rows], 0.0)) * 1e6).astype("int64"),
    }
    b = {
        "TradeId": trade_ref[b_rows],
        "BookCode": books[b_rows],
        "SourceSystem": values["source_system"][b_rows],
        "CptyId": values["counterparty"][b_rows],
        "Isin": values["instrument"][b_rows],
        "TradeDate": np.char.add(values["business_date"][b_rows], " 00:00:00"),
        "Quantity": q[b_rows, 1].astype(np.int64),
        "AmountMinor": np.round(amt[b_rows, 1] * 100).astype(np.int64),
        "State": np.char.add(np.char.upper(np.asarray(_STATUSES)[st[b_rows, 1]]), " "),
        "CptyName": name[b_rows, 1].astype(str),
        "CptyAddress": addr[b_rows, 1].astype(str),
        "LastModified": np.round((ts[b_rows, 1] + np.where(second_b, later[b_rows], 0.0)) * 1000).astype(
            np.int64
        ),
    }
    truth = {
        "book": np.concatenate([books, books[dup]]),
        "trade_ref": np.concatenate([trade_ref, trade_ref[dup]]),
        "occurrence": np.concatenate([np.zeros(n, np.int64), np.ones(dup.size, np.int64)]),
        "label": np.concatenate(
            [np.where(label == "duplicate_key", "consistent", label), np.full(dup.size, "duplicate_key")]
        ),
        "broken_side": np.concatenate(
            [
                np.where(label == "consistent", "", np.where(side == 0, "A", "B")),
                np.where(dup_side == 0, "A", "B"),
            ]
        ),
        **{dim: np.concatenate([v, v[dup]]) for dim, v in values.items()},
    }
    truth["broken_side"] = np.where(truth["label"] == "consistent", "", truth["broken_side"])
    return {"a": a, "b": b, "truth": truth}


def _write(table: dict[str, np.ndarray], path: Path, timestamp_us: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    arrays = {}
    for k, v in table.items():
        if k == timestamp_us:
            arrays[k] = pa.array(v, type=pa.timestamp("us", tz="UTC"))
        else:
            arrays[k] = pa.array(v.tolist() if v.dtype.kind in "UO" else v)
    t = pa.table(arrays)
    if path.suffix == ".csv":
        pacsv.write_csv(t, path)
    else:
        pq.write_table(t, path, compression="zstd")


def generate_extracts(
    out: Path | str,
    rows: int,
    *,
    seed: int = DEFAULT_EXTRACTS_SEED,
    hotspots: Sequence[Hotspot] = (),
    b_format: str = "csv",
    chunk_rows: int = 500_000,
    log: Printer = print,
) -> dict[str, object]:
    """Write both extracts, their truth and their mapping into `out`; returns truth.json's content."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"--out {root}: exists and is not empty")
    if b_format not in ("csv", "parquet"):
        raise UsageError(f"--b-format must be csv or parquet, not {b_format!r}")
    for sub in ("a", "b", "truth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    u = Universe.make(seed)
    for spot in hotspots:
        known = {
            "desk": u.book_desk,
            "counterparty": u.cpty,
            "instrument": u.isin,
            "source_system": u.book_system,
            "business_date": u.days.astype(str),
        }[spot.dimension]
        if spot.value not in set(known.tolist()):
            raise UsageError(
                f"--hotspot {spot.dimension}={spot.value}: no such {spot.dimension} in the generator's "
                "universe"
            )
    t0 = time.perf_counter()
    counts = {c: 0 for c in CLASSES}
    for c, start in enumerate(range(0, rows, chunk_rows)):
        n = min(chunk_rows, rows - start)
        part = _chunk(u, start, n, seed, c, hotspots)
        _write(part["a"], root / "a" / f"part-{c:05d}.parquet", timestamp_us="updated_at")
        _write(part["b"], root / "b" / f"part-{c:05d}.{b_format}")
        _write(part["truth"], root / "truth" / f"part-{c:05d}.parquet")
        classes, found = np.unique(np.asarray(part["truth"]["label"], dtype=str), return_counts=True)
        for cls, k in zip(classes.tolist(), found.tolist(), strict=True):
            counts[str(cls)] += int(k)
        if start + n < rows:
            log(f"generate-extracts: {start + n:,}/{rows:,} records, {time.perf_counter() - t0:.1f} s")
    (root / "mapping.yaml").write_text(MAPPING_YAML)
    truth = {
        "rows": rows,
        "seed": seed,
        "a": {"name": "trading", "format": "parquet"},
        "b": {"name": "risk", "format": b_format},
        "break_mix": {**BREAK_MIX, "duplicate_key": DUPLICATE_KEY_SHARE},
        "hotspots": [{"dimension": h.dimension, "value": h.value, "factor": h.factor} for h in hotspots],
        "labels": counts,
    }
    (root / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    log(f"generate-extracts: {rows:,} records in {time.perf_counter() - t0:.1f} s -> {root}")
    return truth
