"""Locust event listeners: options, per-process preparation, worker -> master accounting, SLO gates.

Where each runs:
- every process: the custom options; on workers and local runs, the request mix
  is built at start-up, not on the first call;
- workers: each stats report carries this process's latency buckets and
  user-seconds (`accounting`), drained;
- the master (or a local run): the engine's /metrics are read when the test
  starts and when Locust quits, the gates are evaluated, printed, written next
  to the CSV report (`<--csv prefix>_slo.json`), and set the exit code: 1 when
  a gate failed, otherwise 0 (a few failed calls under `--slo-error-ratio` do
  not fail the run, unlike Locust's default).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.event import Events
from locust.runners import MasterRunner, Runner, WorkerRunner

from . import profiles, server_metrics, slo
from .accounting import LATENCIES, PACING
from .latency import LatencyBook
from .options import Options, add_arguments
from .server_metrics import ServerLatency, Snapshot
from .users import request_mix

log = logging.getLogger("tradescore_locust")
REPORT_KEY = "tradescore"


class _Run:
    """The master's (or local runner's) view of the current test."""

    def __init__(self) -> None:
        self.book = LatencyBook()
        self.due = 0.0
        self.done = 0
        self.started = time.monotonic()
        self.before: Snapshot | None = None
        self.scrape_error: str | None = None

    def reset(self) -> None:
        self.book.clear()
        self.due = 0.0
        self.done = 0
        self.started = time.monotonic()
        self.before = None
        self.scrape_error = None


RUN = _Run()


def _coordinates(runner: Runner | None) -> bool:
    """True on the process that evaluates the gates: the master, or a local run."""
    return runner is not None and not isinstance(runner, WorkerRunner)


def _generates_load(runner: Runner | None) -> bool:
    return runner is not None and not isinstance(runner, MasterRunner)


def on_parser(parser: LocustArgumentParser, **_: Any) -> None:
    add_arguments(parser)


def on_init(environment: Environment, **_: Any) -> None:
    options = Options.read(environment.parsed_options)
    problems = options.problems()
    if problems:
        for p in problems:
            log.error(p)
        sys.exit(2)
    if environment.profile is None:
        environment.profile = options.load_profile  # shown in the HTML report
    if _generates_load(environment.runner):
        mix = request_mix(options)
        log.info("trade mix %s: %.1f trades per call on average", options.mix, mix.trades_per_call)
    if _coordinates(environment.runner):
        from .mix import MIXES, mean_trades_per_call

        log.info(profiles.describe(options, mean_trades_per_call(MIXES[options.mix])))


def on_test_start(environment: Environment, **_: Any) -> None:
    LATENCIES.clear()
    PACING.drain()
    if not _coordinates(environment.runner):
        return
    RUN.reset()
    options = Options.read(environment.parsed_options)
    if options.metrics_urls:
        try:
            RUN.before = server_metrics.scrape(options.metrics_urls)
        except (OSError, ValueError) as e:
            RUN.scrape_error = f"error: cannot read {','.join(options.metrics_urls)} at start: {e}"
            log.error(RUN.scrape_error)


def on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    due, done = PACING.drain()
    data[REPORT_KEY] = {"latency": LATENCIES.drain(), "due": due, "done": done}


def on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    report = data.get(REPORT_KEY)
    if report:
        RUN.book.merge(report["latency"])
        RUN.due += float(report["due"])
        RUN.done += int(report["done"])


def _server(
    options: Options,
) -> tuple[ServerLatency | None, ServerLatency | None, dict[str, Any]]:
    """The engine's p99 of one-trade and of multi-trade calls over the run, and its summary."""
    if not options.metrics_urls:
        return None, None, {}
    if RUN.scrape_error is not None or RUN.before is None:
        failed = ServerLatency(None, RUN.scrape_error or "error: no reading at start", 0.0)
        return failed, failed, {}
    try:
        after = server_metrics.scrape(options.metrics_urls)
    except (OSError, ValueError) as e:
        msg = f"error: cannot read {','.join(options.metrics_urls)} at the end: {e}"
        log.error(msg)
        return ServerLatency(None, msg, 0.0), ServerLatency(None, msg, 0.0), {}
    window = server_metrics.window(RUN.before, after)
    return (
        server_metrics.server_p99(window, "single"),
        server_metrics.server_p99(window, "batch"),
        server_metrics.summary(window, time.monotonic() - RUN.started),
    )


def on_quitting(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if not _coordinates(runner) or runner is None:
        return
    options = Options.read(environment.parsed_options)
    if isinstance(runner, MasterRunner):
        book, due, done = RUN.book, RUN.due, RUN.done
    else:
        book = LATENCIES
        due, done = PACING.drain()
    server, server_batch, server_summary = _server(options)
    total = runner.stats.total
    facts = slo.RunFacts(
        calls=total.num_requests,
        failures=total.num_failures,
        latencies=book,
        offered_calls=due if options.user_rate > 0 else None,
        paced_calls=done,
        server=server,
        server_batch=server_batch,
    )
    gates = slo.evaluate(options.thresholds(), facts)
    ok = slo.passed(gates)
    lines = [f"SLO gates ({options.load_profile}): {'PASS' if ok else 'FAIL'}", *(g.line() for g in gates)]
    print("\n".join(lines), flush=True)
    for line in lines:
        log.info(line)
    parsed = environment.parsed_options
    prefix = getattr(parsed, "csv_prefix", None) if parsed is not None else None
    if prefix:
        path = Path(f"{prefix}_slo.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "passed": ok,
            "profile": options.load_profile,
            "target": environment.host,
            "gates": [g.as_dict() for g in gates],
            "calls": facts.calls,
            "failures": facts.failures,
            "offered_calls": facts.offered_calls,
            "paced_calls_completed": facts.paced_calls,
            "client_latency_ms": {
                group: {f"p{round(q * 100)}": _ms(hist.quantile(q)) for q in (0.5, 0.9, 0.99, 0.999)}
                | {"calls": hist.total}
                for group, hist in book.groups.items()
            },
            "server": server_summary,
        }
        path.write_text(json.dumps(result, indent=2) + "\n")
    if not ok:
        environment.process_exit_code = 1
    elif runner.exceptions:
        log.error("the locustfile raised %d exception(s): see the report", len(runner.exceptions))
        environment.process_exit_code = 1
    else:
        environment.process_exit_code = 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)


def register(events: Events) -> None:
    events.init_command_line_parser.add_listener(on_parser)
    events.init.add_listener(on_init)
    events.test_start.add_listener(on_test_start)
    events.report_to_master.add_listener(on_report_to_master)
    events.worker_report.add_listener(on_worker_report)
    events.quitting.add_listener(on_quitting)
