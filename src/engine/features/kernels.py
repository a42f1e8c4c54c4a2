"""The validation rules and the feature catalog, compiled: one definition for training and serving.

Both kernels walk `TradeRows` (see `engine.features.rows`) once, row by row, in
machine code (numba, cached on disk after the first compile): a 1-trade call
costs a few microseconds instead of the ~60 small numpy operations per call
that a column-at-a-time version pays, and a 256-trade call stays in cache.

Everything a kernel depends on arrives as an argument (no module globals but
the column numbers below), so a cached compile can never go stale against a
changed bundle; a changed source file anywhere in the package is a new kernel
cache (`engine.jit`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from engine.features.rows import (
    K_ASSET,
    K_CP_ROW,
    K_CURRENCY_CODE,
    K_DUP_TRADE_ID,
    K_FX_ROW,
    K_INSTRUMENT_ROW,
    K_LEN_ACCOUNT,
    K_LEN_CP,
    K_LEN_CURRENCY,
    K_LEN_INSTRUMENT,
    K_LEN_TRADE_ID,
    K_LEN_VENUE,
    K_SIDE,
    K_VENUE_CODE,
    X_ADV,
    X_CP_FAIL_RATE,
    X_CYCLE_DAYS,
    X_INVENTORY,
    X_ON_LOAN,
    X_PRICE,
    X_QUANTITY,
    X_SETTLE_DAY,
    X_SSI,
    X_TRADE_DAY,
)
from engine.jit import Int, compiled

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# -- validation rules, in reporting order (ties on the trade index go to the earlier rule)
R_TRADE_ID_EMPTY = 0
R_TRADE_ID_LONG = 1
R_TRADE_ID_REPEATED = 2
R_ACCOUNT_EMPTY = 3
R_CP_EMPTY = 4
R_CP_LONG = 5
R_INSTRUMENT_EMPTY = 6
R_INSTRUMENT_LONG = 7
R_ASSET_CLASS = 8
R_SIDE = 9
R_QUANTITY = 10
R_PRICE = 11
R_CURRENCY_EMPTY = 12
R_VENUE_EMPTY = 13
R_TRADE_DATE = 14
R_SETTLE_BEFORE_TRADE = 15
R_CYCLE_RANGE = 16
R_NO_SETTLEMENT = 17
R_INVENTORY = 18
R_ON_LOAN = 19
R_SSI = 20
R_CP_FAIL_RATE = 21
R_ADV = 22
N_RULES = 23

# -- limits vector for check_rows
L_ASSET_MIN = 0
L_ASSET_MAX = 1
L_SIDE_MIN = 2
L_SIDE_MAX = 3
L_MAX_ID_LENGTH = 4
L_MAX_CYCLE_DAYS = 5
N_LIMITS = 6

# magnitudes no trade has, whose features would overflow (quantity x price x FX beyond float64,
# a ratio beyond float32): refused, so that every feature the model gets is finite
MAX_QUANTITY = 1e15
MAX_PRICE = 1e12
MAX_INVENTORY_RATIO = 1e9
MIN_ADV = 1e-6
MAX_ADV = 1e15


@compiled
def _flag_bad(v: float) -> bool:
    """A boolean signal that is set but neither 0 nor 1."""
    return v == v and v != 0.0 and v != 1.0


@compiled
def check_rows(x: F64, k: I64, limits: I64, mask: npt.NDArray[np.bool_]) -> tuple[I64, I64]:
    """Per rule: the lowest row index that breaks it (-1: none) and how many rows do.

    When `mask` has one element per row, rows breaking any rule are set True in it.
    """
    n = x.shape[0]
    first = np.full(N_RULES, -1, dtype=np.int64)
    count = np.zeros(N_RULES, dtype=np.int64)
    hit = np.zeros(N_RULES, dtype=np.bool_)
    want_mask = mask.shape[0] == n and n > 0
    max_id = limits[L_MAX_ID_LENGTH]
    for i in range(n):
        hit[:] = False
        len_id = k[i, K_LEN_TRADE_ID]
        hit[R_TRADE_ID_EMPTY] = len_id == 0
        hit[R_TRADE_ID_LONG] = len_id > max_id
        hit[R_TRADE_ID_REPEATED] = k[i, K_DUP_TRADE_ID] != 0 and len_id != 0
        hit[R_ACCOUNT_EMPTY] = k[i, K_LEN_ACCOUNT] == 0
        hit[R_CP_EMPTY] = k[i, K_LEN_CP] == 0
        hit[R_CP_LONG] = k[i, K_LEN_CP] > max_id
        hit[R_INSTRUMENT_EMPTY] = k[i, K_LEN_INSTRUMENT] == 0
        hit[R_INSTRUMENT_LONG] = k[i, K_LEN_INSTRUMENT] > max_id
        asset = k[i, K_ASSET]
        hit[R_ASSET_CLASS] = asset < limits[L_ASSET_MIN] or asset > limits[L_ASSET_MAX]
        side = k[i, K_SIDE]
        hit[R_SIDE] = side < limits[L_SIDE_MIN] or side > limits[L_SIDE_MAX]
        q = x[i, X_QUANTITY]
        hit[R_QUANTITY] = not (q > 0.0 and q <= MAX_QUANTITY)
        p = x[i, X_PRICE]
        hit[R_PRICE] = not (p > 0.0 and p <= MAX_PRICE)
        hit[R_CURRENCY_EMPTY] = k[i, K_LEN_CURRENCY] == 0
        hit[R_VENUE_EMPTY] = k[i, K_LEN_VENUE] == 0
        td = x[i, X_TRADE_DAY]
        sd = x[i, X_SETTLE_DAY]
        td_set = td == td
        sd_set = sd == sd
        hit[R_TRADE_DATE] = not td_set
        hit[R_SETTLE_BEFORE_TRADE] = td_set and sd_set and sd < td
        c = x[i, X_CYCLE_DAYS]
        c_set = c == c
        hit[R_CYCLE_RANGE] = c_set and not (c >= 0.0 and c <= limits[L_MAX_CYCLE_DAYS])
        hit[R_NO_SETTLEMENT] = not sd_set and not c_set
        inv = x[i, X_INVENTORY]
        hit[R_INVENTORY] = inv == inv and not (inv >= 0.0 and inv <= MAX_INVENTORY_RATIO)
        hit[R_ON_LOAN] = _flag_bad(x[i, X_ON_LOAN])
        hit[R_SSI] = _flag_bad(x[i, X_SSI])
        r = x[i, X_CP_FAIL_RATE]
        hit[R_CP_FAIL_RATE] = r == r and not (r >= 0.0 and r <= 1.0)
        adv = x[i, X_ADV]
        hit[R_ADV] = adv == adv and not (adv >= MIN_ADV and adv <= MAX_ADV)
        bad = False
        for j in range(N_RULES):
            if hit[j]:
                bad = True
                if first[j] < 0:
                    first[j] = i
                count[j] += 1
        if bad and want_mask:
            mask[i] = True
    return first, count


# -- the feature catalog, by number (engine.features.compute.CATALOG names them) --------
F_ASSET_CLASS = 0
F_SIDE = 1
F_VENUE = 2
F_CURRENCY = 3
F_LOG_NOTIONAL_USD = 4
F_LOG_QUANTITY_TO_ADV = 5
F_LOG_ADV = 6
F_INVENTORY_RATIO = 7
F_ON_LOAN = 8
F_SSI = 9
F_CP_FAIL_RATE = 10
F_CP_LOG_TRADES = 11
F_INSTRUMENT_FAIL_RATE = 12
F_CYCLE_DAYS = 13
F_WEEKDAY = 14
N_FEATURES = 15


@compiled
def _log10_positive(v: float) -> float:
    return math.log10(v) if v > 0.0 else math.nan


@compiled
def weekdays_between(begin: Int, end: Int) -> Int:
    """Monday..Friday days in [begin, end) (negative when end < begin), like np.busday_count."""
    if end < begin:
        return -weekdays_between(end, begin)
    span = end - begin
    full, rest = span // 7, span % 7
    count = full * 5
    wd = (begin + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    for _ in range(rest):
        if wd < 5:
            count += 1
        wd = (wd + 1) % 7
    return count


@compiled
def compute_rows(
    x: F64, k: I64, refs: tuple[F64, ...], others: I64, columns: I64, out: npt.NDArray[np.float32]
) -> None:
    """Write catalog feature f of row i to out[i, columns[f]] (skipped where columns[f] < 0).

    `refs`: the reference value arrays (counterparty fail rate, counterparty trades,
    instrument ADV, instrument fail rate, USD per unit of the currency), indexed by the K_*_ROW
    columns; `others`: the OTHER code of the venue and currency vocabularies.
    Rows must have passed `check_rows`.
    """
    n = x.shape[0]
    cp_rate, cp_trades, inst_adv, inst_rate, fx_usd = refs
    for i in range(n):
        # reference values (NaN: id not in the table), read in line: a helper call would pass
        # each array as a reference-counted struct, dearer than the read
        cp = k[i, K_CP_ROW]
        inst = k[i, K_INSTRUMENT_ROW]
        fx = k[i, K_FX_ROW]
        ref_cp_rate = cp_rate[cp] if 0 <= cp < cp_rate.shape[0] else math.nan
        ref_cp_trades = cp_trades[cp] if 0 <= cp < cp_trades.shape[0] else math.nan
        ref_adv = inst_adv[inst] if 0 <= inst < inst_adv.shape[0] else math.nan
        ref_inst_rate = inst_rate[inst] if 0 <= inst < inst_rate.shape[0] else math.nan
        ref_fx = fx_usd[fx] if 0 <= fx < fx_usd.shape[0] else math.nan
        qty = x[i, X_QUANTITY]
        adv = x[i, X_ADV]
        if adv != adv:
            adv = ref_adv
        td = x[i, X_TRADE_DAY]
        sd = x[i, X_SETTLE_DAY]
        venue = k[i, K_VENUE_CODE]
        currency = k[i, K_CURRENCY_CODE]
        inv = x[i, X_INVENTORY]
        rate = x[i, X_CP_FAIL_RATE]
        if rate != rate:
            rate = ref_cp_rate
        if td == td and sd == sd:
            cycle = float(weekdays_between(int(td), int(sd)))
        else:
            cycle = x[i, X_CYCLE_DAYS]
        for f in range(N_FEATURES):
            j = columns[f]
            if j < 0:
                continue
            if f == F_ASSET_CLASS:
                v = float(k[i, K_ASSET] - 1)
            elif f == F_SIDE:
                v = float(k[i, K_SIDE] - 1)
            elif f == F_VENUE:
                v = float(venue if venue >= 0 else others[0])
            elif f == F_CURRENCY:
                v = float(currency if currency >= 0 else others[1])
            elif f == F_LOG_NOTIONAL_USD:
                v = _log10_positive(qty * x[i, X_PRICE] * ref_fx)
            elif f == F_LOG_QUANTITY_TO_ADV:
                v = _log10_positive(qty / adv)
            elif f == F_LOG_ADV:
                v = _log10_positive(adv)
            elif f == F_INVENTORY_RATIO:
                v = 1e6 if inv > 1e6 else inv
            elif f == F_ON_LOAN:
                v = x[i, X_ON_LOAN]
            elif f == F_SSI:
                v = x[i, X_SSI]
            elif f == F_CP_FAIL_RATE:
                v = rate
            elif f == F_CP_LOG_TRADES:
                v = math.log10(1.0 + ref_cp_trades)
            elif f == F_INSTRUMENT_FAIL_RATE:
                v = ref_inst_rate
            elif f == F_CYCLE_DAYS:
                v = cycle
            else:  # F_WEEKDAY
                v = float((int(td) + 3) % 7) if td == td else math.nan
            out[i, j] = v
