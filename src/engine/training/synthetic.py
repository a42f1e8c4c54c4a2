"""Synthetic trades with settlement-fail labels: a vectorised simulator.

`generate_trades(n, seed)` draws `n` trades from one simulated broker-dealer
book and labels each with whether it failed to settle on its intended date.
Everything is numpy over whole columns: the only Python loops run over the
universe (a few thousand instruments, a few hundred counterparties) or over
feature constants, never over trades.

The simulated world (figures from /work/shared/DOMAIN.md where they exist):

- Universe: ~400 counterparties with a latent quality (about 7 % chronically
  bad), ~3,000 instruments across the seven `AssetClass` values (equity-heavy,
  then ETFs, government / corporate / municipal bonds, money market, funds),
  each with a home market that fixes a consistent venue and currency (DTC/USD,
  FED for US Treasuries, EUROCLEAR or CLEARSTREAM/EUR, CREST/GBP, SIX/CHF,
  JASDEC/JPY and BOJ for JGBs, Eurobonds at the ICSDs in USD or EUR), a
  lognormal average daily volume (ADV) by class, hard-to-borrow flags, and a
  Zipf-like popularity that follows liquidity.
- Calendar: business days from 1 Mar 2024 to 28 Feb 2025 with a few stress
  episodes of 2-5 days whose volume is 2-3.5x normal ("peaks arrive suddenly
  and last days"; COVID volatility nearly doubled DTCC's daily volume).
- Settlement cycles by market: US equities, ETFs, corporates and munis T+2
  until and T+1 from 28 May 2024; US Treasuries T+1, money market T+0; EU, UK
  (gilts T+1), Swiss and Japanese markets T+2 (JGBs T+1); funds T+1..T+3; plus
  non-standard cash (T+0) and extended (T+3..T+10) trades. Each trade states
  its cycle as a settlement date, as `settlement_cycle_days`, or both.
- Optional signals are missing at realistic, partly account-driven rates (NaN,
  never 0): inventory only exists for deliveries (sells), legacy booking
  systems leave signals unset, and so on.

The failure label comes from a logistic model over noisy, interacting causes,
ordered as the Deutsche Bank summary ranks them (DOMAIN.md): insufficient
securities for delivery (worse the shorter the cycle), securities on loan with
a recall pending x short cycles, illiquidity (size against ADV, stronger for
bonds), counterparty behaviour (latent; the model only sees a noisy
historical fail rate), SSI mismatches (only partly flagged by the pre-matching
signal), stress days, non-standard and long cycles, large notionals, latent
delivery chains (an instrument-day shock that hits deliveries relying on
inbound receipts: "A cannot deliver to B until C delivers to A"), account and
instrument effects nobody observes, and irreducible per-trade noise.

The intercept is solved so that a simulated *history* of the same book fails
at `base_rate` (default 3.5 %, inside the 2-4 % reported for bonds and below
the ~5-8 % by value reported for equities). The reference tables
(counterparty / instrument fail rates and trade counts, ADV estimates) are
computed from that history, which is drawn independently of the returned
trades, so the tables carry no information about their labels (no target
leakage); counterparties and instruments that are new since the history are
absent from the tables and reach the model as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from engine.features.columns import TradeColumns
from engine.models.reference import KeyedTable, ReferenceTables

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
Str = npt.NDArray[np.str_]

# --------------------------------------------------------------------------- constants

#: asset classes in proto order (AssetClass number = index + 1)
EQUITY, ETF, GOVT, CORP, MUNI, MMKT, FUND = range(7)
N_CLASSES = 7
#: share of instruments by class, and share of *trades* by class
INSTRUMENT_MIX = np.array([0.50, 0.12, 0.09, 0.15, 0.06, 0.04, 0.04])
TRADE_MIX = np.array([0.58, 0.14, 0.10, 0.08, 0.03, 0.04, 0.03])

US, EU, UK, CH, JP, XS = range(6)
MARKET_NAMES = ("US", "EU", "UK", "CH", "JP", "XS")  # XS: Eurobonds (international)
#: P(home market | class), rows in class order, columns in market order
CLASS_MARKET_P = np.array(
    [
        [0.50, 0.22, 0.12, 0.06, 0.10, 0.00],  # equity
        [0.65, 0.25, 0.10, 0.00, 0.00, 0.00],  # ETF
        [0.40, 0.33, 0.12, 0.05, 0.10, 0.00],  # government bond
        [0.42, 0.20, 0.05, 0.02, 0.03, 0.28],  # corporate bond
        [1.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # municipal bond
        [0.60, 0.30, 0.10, 0.00, 0.00, 0.00],  # money market
        [0.50, 0.40, 0.10, 0.00, 0.00, 0.00],  # fund
    ]
)
ISIN_PREFIX = {
    US: ("US",),
    EU: ("DE", "FR", "NL", "IT", "ES", "BE"),
    UK: ("GB",),
    CH: ("CH",),
    JP: ("JP",),
    XS: ("XS",),
}
VENUES = ("DTC", "FED", "EUROCLEAR", "CLEARSTREAM", "CREST", "SIX", "JASDEC", "BOJ")
CURRENCIES = ("USD", "EUR", "GBP", "CHF", "JPY")
#: approximate 2024 averages; the engine only needs notionals on one scale
USD_PER_UNIT = (1.0, 1.082, 1.278, 1.136, 0.0066)

#: lognormal ADV (units per day: shares, or nominal for bonds / money market)
ADV_MEDIAN = np.array([9e5, 3e5, 3e8, 3e6, 2e5, 5e7, 6e4])
ADV_SIGMA = np.array([1.5, 1.7, 0.9, 1.3, 1.1, 0.9, 1.2])
#: log10(quantity / ADV) of a typical ticket, by class
SIZE_MU = np.array([-3.2, -3.0, -2.7, -1.5, -1.1, -2.2, -2.0])
SIZE_SIGMA = 0.75
#: logit shift by class: ETFs fail more than equities (DOMAIN.md), money
#: market and government paper least
CLASS_EFFECT = np.array([0.0, 0.35, -0.45, -0.30, -0.35, -0.90, -0.55])
BONDISH = np.array([False, False, True, True, True, False, False])

#: US T+1 go-live: trades from this date settle T+1 (DOMAIN.md)
US_T1_DATE = np.datetime64("2024-05-28")
PERIOD_START = np.datetime64("2024-03-01")
PERIOD_END = np.datetime64("2025-03-01")  # exclusive
HOLIDAYS = np.array(
    [
        "2024-03-29",
        "2024-05-27",
        "2024-07-04",
        "2024-09-02",
        "2024-11-28",
        "2024-12-25",
        "2025-01-01",
        "2025-01-20",
        "2025-02-17",
    ],
    dtype="datetime64[D]",
)

DEFAULT_BASE_RATE = 0.035
DEFAULT_HISTORY_ROWS = 300_000


# --------------------------------------------------------------------------- universe


@dataclass(frozen=True, slots=True)
class Universe:
    """The book's counterparties, instruments and accounts, with their latent traits."""

    cp_ids: Str
    cp_quality: F64  # latent logit effect on fails (the truth behind the fail-rate table)
    cp_weight: F64  # share of trades
    cp_ssi_mismatch: F64  # probability that SSIs do not match
    cp_new: Bool  # onboarded after the history: absent from the reference table
    cp_caller_rate: F64  # the caller's own (noisy) estimate of the counterparty's fail rate

    inst_ids: Str
    inst_class: I64  # 0..6 (AssetClass number - 1)
    inst_market: I64
    inst_venue: I64  # index into VENUES
    inst_currency: I64  # index into CURRENCIES
    inst_adv: F64  # true ADV
    inst_adv_z: F64  # standardised log ADV within the class (liquidity)
    inst_adv_table: F64  # ADV estimate in the reference table
    inst_adv_feed: F64  # ADV estimate a caller's market-data feed sends
    inst_price: F64
    inst_htb: Bool  # hard to borrow
    inst_latent: F64
    inst_weight: F64
    inst_new: Bool  # issued / first traded after the history
    inst_fund_cycle: I64  # standard cycle of a fund's units

    acct_ids: Str
    acct_latent: F64
    acct_weight: F64
    acct_legacy: Bool  # booking system that leaves most optional signals unset
    acct_sends_cp_rate: Bool
    acct_sends_adv: Bool


def _codes(rng: np.random.Generator, n: int, width: int, alphabet: str) -> Str:
    """`n` random strings of `width` characters (vectorised over columns)."""
    chars = np.array(list(alphabet))
    picks = chars[rng.integers(0, len(alphabet), size=(n, width))]
    out = picks[:, 0].astype(f"<U{width}")
    for j in range(1, width):
        out = np.strings.add(out, picks[:, j])
    return out


def _padded(values: npt.NDArray[np.integer], width: int) -> Str:
    out: Str = np.strings.zfill(values.astype(np.str_), width)
    return out


def _zipf_weights(score: F64, exponent: float, offset: float) -> F64:
    """Zipf-like weights by the rank of `score` (highest score = rank 0)."""
    rank = np.empty(score.shape[0], dtype=np.float64)
    rank[np.argsort(-score, kind="stable")] = np.arange(score.shape[0])
    w: F64 = (rank + offset) ** -exponent
    out: F64 = w / float(w.sum())
    return out


def make_universe(
    rng: np.random.Generator, n_counterparties: int = 400, n_instruments: int = 3000, n_accounts: int = 120
) -> Universe:
    """Draw the book: counterparties, instruments and accounts with latent traits."""
    # counterparties: LEI-like ids, latent quality with a chronically bad tail
    cp_ids = np.strings.add(
        np.strings.add("5493", _padded(np.arange(n_counterparties), 5)),
        _codes(rng, n_counterparties, 11, "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"),
    )
    chronic = rng.random(n_counterparties) < 0.07
    cp_quality = rng.normal(0.0, 0.55, n_counterparties) + 1.4 * chronic
    cp_weight = _zipf_weights(rng.normal(size=n_counterparties), 1.05, 3.0)
    cp_ssi = np.clip(0.012 * np.exp(0.7 * cp_quality + rng.normal(0.0, 0.5, n_counterparties)), 0.002, 0.35)
    cp_new = rng.random(n_counterparties) < 0.04
    true_rate = 1.0 / (1.0 + np.exp(-(math.log(0.035 / 0.965) + cp_quality)))
    caller_n = 40 + rng.integers(0, 400, n_counterparties)
    cp_caller_rate = rng.binomial(caller_n, true_rate) / caller_n

    # instruments: class, home market (venue + currency), liquidity, borrow, popularity
    cls = rng.choice(N_CLASSES, size=n_instruments, p=INSTRUMENT_MIX)
    cum = np.cumsum(CLASS_MARKET_P[cls], axis=1)
    market = np.minimum((rng.random(n_instruments)[:, None] > cum).sum(axis=1), XS)
    icsd = np.where(rng.random(n_instruments) < 0.55, VENUES.index("EUROCLEAR"), VENUES.index("CLEARSTREAM"))
    venue = np.select(
        [
            (market == US) & (cls == GOVT),
            market == US,
            (market == EU) | (market == XS),
            market == UK,
            market == CH,
            (market == JP) & (cls == GOVT),
        ],
        [
            VENUES.index("FED"),
            VENUES.index("DTC"),
            icsd,
            VENUES.index("CREST"),
            VENUES.index("SIX"),
            VENUES.index("BOJ"),
        ],
        default=VENUES.index("JASDEC"),
    )
    currency = np.select(
        [market == US, market == EU, market == UK, market == CH, market == JP],
        [0, 1, 2, 3, 4],
        default=np.where(rng.random(n_instruments) < 0.6, 0, 1),  # Eurobonds: USD or EUR
    )
    prefix = np.empty(n_instruments, dtype="<U2")
    for m, options in ISIN_PREFIX.items():
        sel = market == m
        prefix[sel] = np.array(options)[rng.integers(0, len(options), int(sel.sum()))]
    inst_ids = np.strings.add(
        np.strings.add(prefix, _codes(rng, n_instruments, 3, "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")),
        np.strings.add(_padded(np.arange(n_instruments), 6), _padded(rng.integers(0, 10, n_instruments), 1)),
    )
    adv_z = rng.normal(size=n_instruments)
    adv = ADV_MEDIAN[cls] * np.exp(ADV_SIGMA[cls] * adv_z) * np.where(market == JP, 3.0, 1.0)
    price = np.select(
        [cls == EQUITY, cls == ETF, cls == FUND, cls == MMKT, cls == MUNI],
        [
            np.exp(rng.normal(math.log(45.0), 0.9, n_instruments)),
            np.exp(rng.normal(math.log(60.0), 0.7, n_instruments)),
            np.exp(rng.normal(math.log(25.0), 0.6, n_instruments)),
            0.985 + 0.014 * rng.random(n_instruments),
            np.clip(rng.normal(1.02, 0.04, n_instruments), 0.7, 1.3),
        ],
        # bonds: price per unit of nominal (a quote of 99.5 is 0.995)
        default=np.clip(rng.normal(1.0, 0.06, n_instruments), 0.55, 1.4),
    )
    price = np.where((market == JP) & (cls != GOVT) & (cls != CORP), price * 140.0, price)
    htb_p = 1.0 / (1.0 + np.exp(-(-3.0 - 0.8 * adv_z)))
    htb = rng.random(n_instruments) < np.where((cls == EQUITY) | (cls == ETF), htb_p, 0.3 * htb_p)
    popularity = _zipf_weights(adv_z + rng.normal(0.0, 0.7, n_instruments), 1.1, 8.0)
    class_total = np.bincount(cls, weights=popularity, minlength=N_CLASSES)
    inst_weight = popularity / class_total[cls] * TRADE_MIX[cls]
    inst_weight /= inst_weight.sum()
    inst_new = rng.random(n_instruments) < np.where(BONDISH[cls], 0.08, 0.03)
    fund_cycle = rng.choice(np.array([1, 2, 3]), size=n_instruments, p=[0.7, 0.2, 0.1])

    acct_ids = np.strings.add("ACC-", _padded(np.arange(10001, 10001 + n_accounts), 5))
    acct_weight = np.exp(rng.normal(0.0, 1.0, n_accounts))
    return Universe(
        cp_ids=cp_ids,
        cp_quality=cp_quality,
        cp_weight=cp_weight,
        cp_ssi_mismatch=cp_ssi,
        cp_new=cp_new,
        cp_caller_rate=cp_caller_rate,
        inst_ids=inst_ids,
        inst_class=cls.astype(np.int64),
        inst_market=market.astype(np.int64),
        inst_venue=venue.astype(np.int64),
        inst_currency=currency.astype(np.int64),
        inst_adv=adv,
        inst_adv_z=adv_z,
        inst_adv_table=adv * np.exp(rng.normal(0.0, 0.3, n_instruments)),
        inst_adv_feed=adv * np.exp(rng.normal(0.0, 0.2, n_instruments)),
        inst_price=price,
        inst_htb=htb,
        inst_latent=rng.normal(0.0, 0.35, n_instruments),
        inst_weight=inst_weight,
        inst_new=inst_new,
        inst_fund_cycle=fund_cycle.astype(np.int64),
        acct_ids=acct_ids,
        acct_latent=rng.normal(0.0, 0.2, n_accounts),
        acct_weight=acct_weight / acct_weight.sum(),
        acct_legacy=rng.random(n_accounts) < 0.2,
        acct_sends_cp_rate=rng.random(n_accounts) < 0.3,
        acct_sends_adv=rng.random(n_accounts) < 0.5,
    )


# --------------------------------------------------------------------------- calendar


@dataclass(frozen=True, slots=True)
class Calendar:
    """Business days of the period with volume weights and stress episodes."""

    days: npt.NDArray[np.datetime64]
    weight: F64  # probability of a trade falling on each day
    stress: F64  # logit bump on stress days, 0 elsewhere


def make_calendar(rng: np.random.Generator, episodes: int = 4) -> Calendar:
    all_days = np.arange(PERIOD_START, PERIOD_END, dtype="datetime64[D]")
    days = all_days[np.is_busday(all_days, holidays=HOLIDAYS)]
    n = days.shape[0]
    weight = np.exp(rng.normal(0.0, 0.15, n))
    # month ends are busier
    month = days.astype("datetime64[M]")
    last_of_month = np.r_[month[1:] != month[:-1], True]
    weight = np.where(last_of_month, weight * 1.3, weight)
    stress = np.zeros(n)
    starts = rng.choice(n - 6, size=episodes, replace=False)
    for s, length, spike, bump in zip(
        starts.tolist(),
        rng.integers(2, 6, episodes).tolist(),
        rng.uniform(2.0, 3.5, episodes).tolist(),
        rng.uniform(0.5, 0.9, episodes).tolist(),
        strict=True,
    ):
        weight[s : s + length] *= spike
        stress[s : s + length] = bump
    return Calendar(days, weight / weight.sum(), stress)


# --------------------------------------------------------------------------- trades


class _Draw(NamedTuple):
    trades: TradeColumns
    logit: F64  # fail logit without the intercept
    cp: I64  # counterparty index of each trade
    inst: I64


def _sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-x))


def _draw(u: Universe, cal: Calendar, n: int, rng: np.random.Generator, prefix: str, history: bool) -> _Draw:
    """Draw `n` trades and their fail logit (without intercept); no per-trade Python."""
    n_days = cal.days.shape[0]
    cp_w = np.where(u.cp_new, 0.0, u.cp_weight) if history else u.cp_weight
    inst_w = np.where(u.inst_new, 0.0, u.inst_weight) if history else u.inst_weight
    cp = rng.choice(cp_w.shape[0], size=n, p=cp_w / cp_w.sum())
    inst = rng.choice(inst_w.shape[0], size=n, p=inst_w / inst_w.sum())
    acct = rng.choice(u.acct_ids.shape[0], size=n, p=u.acct_weight)
    day = rng.choice(n_days, size=n, p=cal.weight)
    trade_date = cal.days[day]
    cls = u.inst_class[inst]
    market = u.inst_market[inst]
    equityish = (cls == EQUITY) | (cls == ETF)
    htb = u.inst_htb[inst]
    legacy = u.acct_legacy[acct]
    stress = cal.stress[day]

    # side: short sales only in equities / ETFs (and a few corporates)
    r = rng.random(n)
    short_p = np.where(equityish, 0.08, np.where(cls == CORP, 0.02, 0.0))
    side = np.where(r < short_p, 3, np.where(r < short_p + 0.46, 2, 1)).astype(np.int32)
    sell = side == 2
    short = side == 3
    deliver = sell | short

    # size against liquidity; bonds and funds trade in round nominal / units
    adv = u.inst_adv[inst]
    block = rng.random(n) < 0.03
    log_q_adv = SIZE_MU[cls] + SIZE_SIGMA * rng.normal(size=n) + np.where(block, 1.0, 0.0)
    raw_q = adv * 10.0**log_q_adv
    lot = np.where(BONDISH[cls], 1000.0, np.where(cls == MMKT, 10000.0, 1.0))
    round_lot = equityish & (rng.random(n) < 0.6)
    lot = np.where(round_lot & (raw_q >= 100.0), 100.0, lot)
    quantity = np.maximum(np.round(raw_q / lot), 1.0) * lot
    price = u.inst_price[inst] * np.exp(rng.normal(0.0, 0.03, n))
    price = np.where(BONDISH[cls] | (cls == MMKT), np.round(price, 6), np.round(price, 4))
    ccy = u.inst_currency[inst]
    notional_usd = quantity * price * np.asarray(USD_PER_UNIT)[ccy]

    # settlement cycle: the market's standard, then non-standard deals
    us_t1 = trade_date >= US_T1_DATE
    standard = np.select(
        [
            cls == FUND,
            cls == MMKT,
            (market == US) & (cls == GOVT),
            market == US,
            (market == UK) & (cls == GOVT),
            (market == JP) & (cls == GOVT),
        ],
        [u.inst_fund_cycle[inst], np.where(market == US, 0, 1), 1, np.where(us_t1, 1, 2), 1, 1],
        default=2,
    )
    r = rng.random(n)
    extended = r < 0.03
    cash = (r >= 0.03) & (r < 0.042) & (standard > 0)
    plus_one = (r >= 0.042) & (r < 0.057)
    cycle = np.where(extended, standard + rng.integers(1, 9, n), np.where(cash, 0, standard + plus_one))
    settle = np.busday_offset(trade_date, cycle, roll="forward")
    form = rng.random(n)  # how the caller states the cycle
    give_date = form < 0.70
    give_cycle = form >= 0.55

    # inventory for deliveries: shortfall when stock is not there (cause no. 1)
    shortfall_p = np.clip(
        np.where(short, 0.18, 0.06)
        * np.where(htb, 2.5, 1.0)
        * np.exp(u.acct_latent[acct] * 1.5)
        * np.where(BONDISH[cls], 1.5, 1.0)
        * (1.0 + 0.5 * (stress > 0)),
        0.0,
        0.7,
    )
    has_shortfall = deliver & (rng.random(n) < shortfall_p)
    inv_true = np.where(
        has_shortfall,
        rng.beta(2.0, 1.2, n),
        1.0 + np.exp(rng.normal(0.3, 1.1, n)),
    )
    inv_true = np.where(deliver, inv_true, np.nan)
    inv_missing = rng.random(n) < np.where(legacy, 0.6, 0.08)
    inventory_ratio = np.where(
        deliver & ~inv_missing, np.round(inv_true * np.exp(rng.normal(0.0, 0.08, n)), 4), np.nan
    )

    # on loan with a recall pending (cause no. 2), only for long positions sold
    recall_p = (
        0.035 * np.where(htb, 3.0, 1.0) * np.where(cls == ETF, 1.5, 1.0) * np.where(equityish, 1.0, 0.4)
    )
    recall = sell & (rng.random(n) < recall_p)
    recall_seen = rng.random(n) < np.where(sell, np.where(legacy, 0.3, 0.85), np.where(short, 0.6, 0.45))
    on_loan = np.where(recall_seen, recall.astype(np.float64), np.nan)

    # SSIs (cause no. 4): mismatches, only partly caught by pre-matching
    cross_border = market != US
    ssi_bad = rng.random(n) < u.cp_ssi_mismatch[cp] * np.where(cross_border, 1.6, 1.0)
    caught = rng.random(n) < 0.8
    false_alarm = rng.random(n) < 0.01
    ssi_obs = np.where(ssi_bad, ~caught, ~false_alarm).astype(np.float64)
    ssi_seen = rng.random(n) < np.where(legacy, 0.4, 0.88)
    ssi_matched = np.where(ssi_seen, ssi_obs, np.nan)

    # caller-provided history signals (else the engine fills them from the tables)
    cp_rate = np.where(u.acct_sends_cp_rate[acct] & (rng.random(n) < 0.9), u.cp_caller_rate[cp], np.nan)
    adv_feed = np.maximum(np.round(u.inst_adv_feed[inst]), 1.0)
    adv_given = np.where(u.acct_sends_adv[acct] & (rng.random(n) < 0.9), adv_feed, np.nan)

    # latent delivery chains: an instrument-day shock, likelier for illiquid names
    # and on stress days, that hits deliveries relying on inbound receipts
    chain_p = _sigmoid(-3.6 - 0.5 * u.inst_adv_z[inst] + 1.5 * stress + 0.8 * BONDISH[cls])
    shock_u = rng.random((u.inst_ids.shape[0], n_days))  # one draw per instrument-day
    chain = shock_u[inst, day] < chain_p
    relies_on_receipts = deliver & (inv_true < 1.6)

    cyc = cycle.astype(np.float64)
    short_cycle_factor = np.select([cyc <= 0, cyc <= 1, cyc <= 2, cyc <= 3], [1.4, 1.25, 1.0, 0.75], 0.55)
    z_notional = np.clip(np.log10(notional_usd) - 6.0, -2.0, 3.0)
    size_term = np.clip(log_q_adv + 2.0, -2.0, 3.0) * np.where(BONDISH[cls], 0.9, 0.5)
    logit = (
        CLASS_EFFECT[cls]
        + 0.25 * sell
        + 0.45 * short
        + 0.5 * (short & htb)
        + u.cp_quality[cp] * np.where(side == 1, 1.4, 0.9)
        + u.inst_latent[inst]
        + u.acct_latent[acct]
        + has_shortfall * (1.8 + 2.4 * (1.0 - np.where(has_shortfall, inv_true, 1.0))) * short_cycle_factor
        + recall * (0.8 + 2.0 * (cyc <= 1) + 1.0 * (cyc == 2))
        + size_term
        - 0.12 * u.inst_adv_z[inst]
        + ssi_bad * (2.8 - 0.3 * np.minimum(cyc, 4.0))
        + 0.45 * (cyc >= 5)
        + 0.5 * cash
        + 0.18 * z_notional
        + stress * (1.0 + 0.5 * has_shortfall)
        + chain * (0.5 + 1.4 * relies_on_receipts)
        + rng.normal(0.0, 0.5, n)
    )

    trade_id = np.strings.add(prefix, _padded(np.arange(n), 8))
    trades = TradeColumns(
        trade_id=trade_id,
        account_id=u.acct_ids[acct],
        counterparty_id=u.cp_ids[cp],
        instrument_id=u.inst_ids[inst],
        asset_class=(cls + 1).astype(np.int32),
        side=side,
        quantity=quantity,
        price=price,
        currency=np.asarray(CURRENCIES)[ccy],
        trade_date=trade_date,
        settlement_date=np.where(give_date, settle, np.datetime64("NaT")).astype("datetime64[D]"),
        settlement_cycle_days=np.where(give_cycle | ~give_date, cyc, np.nan),
        settlement_venue=np.asarray(VENUES)[u.inst_venue[inst]],
        inventory_ratio=inventory_ratio,
        on_loan_recall_pending=on_loan,
        ssi_matched=ssi_matched,
        counterparty_fail_rate=cp_rate,
        instrument_adv=adv_given,
    )
    return _Draw(trades, logit, cp, inst)


def solve_intercept(logit: F64, base_rate: float) -> float:
    """The intercept b with mean(sigmoid(logit + b)) == base_rate (bisection)."""
    if not 0.0 < base_rate < 1.0:
        raise ValueError(f"base_rate must be inside (0, 1), got {base_rate}")
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(_sigmoid(logit + mid).mean()) < base_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- public API


class SyntheticData(NamedTuple):
    """Trades, their labels (1 = failed to settle on time) and the reference tables."""

    trades: TradeColumns
    labels: npt.NDArray[np.int8]
    references: ReferenceTables


def fx_table() -> KeyedTable:
    return KeyedTable.build(list(CURRENCIES), {"usd_per_unit": list(USD_PER_UNIT)})


def _tables(u: Universe, hist: _Draw, fails: npt.NDArray[np.int8]) -> ReferenceTables:
    n_cp, n_inst = u.cp_ids.shape[0], u.inst_ids.shape[0]
    cp_trades = np.bincount(hist.cp, minlength=n_cp).astype(np.float64)
    cp_fails = np.bincount(hist.cp, weights=fails, minlength=n_cp)
    inst_trades = np.bincount(hist.inst, minlength=n_inst).astype(np.float64)
    inst_fails = np.bincount(hist.inst, weights=fails, minlength=n_inst)
    seen_cp = cp_trades > 0
    seen_inst = ~u.inst_new  # market data knows every listed instrument's ADV
    inst_rate = np.where(inst_trades > 0, inst_fails / np.maximum(inst_trades, 1.0), np.nan)
    return ReferenceTables(
        counterparties=KeyedTable.build(
            u.cp_ids[seen_cp],
            {"fail_rate": (cp_fails / np.maximum(cp_trades, 1.0))[seen_cp], "trades": cp_trades[seen_cp]},
        ),
        instruments=KeyedTable.build(
            u.inst_ids[seen_inst],
            {
                "adv": np.maximum(np.round(u.inst_adv_table[seen_inst]), 1.0),
                "fail_rate": inst_rate[seen_inst],
            },
        ),
        fx=fx_table(),
    )


def generate_trades(
    n: int,
    seed: int,
    *,
    base_rate: float = DEFAULT_BASE_RATE,
    history_rows: int = DEFAULT_HISTORY_ROWS,
    n_counterparties: int = 400,
    n_instruments: int = 3000,
) -> SyntheticData:
    """`n` labelled synthetic trades from the book drawn with `seed`.

    The universe, calendar, intercept and reference tables depend only on
    `seed` (and the keyword arguments), not on `n`: two calls with the same
    seed draw rows from the same process. `base_rate` is the fail rate the
    intercept is solved for on the simulated history; the returned rows land
    near it (new counterparties and instruments make them a little riskier).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    world, hist_rng, rows_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    universe = make_universe(world, n_counterparties, n_instruments)
    hist = _draw(universe, make_calendar(world), history_rows, hist_rng, "H", history=True)
    intercept = solve_intercept(hist.logit, base_rate)
    hist_fails = (hist_rng.random(history_rows) < _sigmoid(hist.logit + intercept)).astype(np.int8)
    refs = _tables(universe, hist, hist_fails)
    rows = _draw(universe, make_calendar(world), n, rows_rng, "T", history=False)
    labels = (rows_rng.random(n) < _sigmoid(rows.logit + intercept)).astype(np.int8)
    return SyntheticData(rows.trades, labels, refs)
