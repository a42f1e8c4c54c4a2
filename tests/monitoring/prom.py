"""A real Prometheus server for tests: started on a free port with a temporary config, queried over HTTP.

Debian's `prometheus` package provides the `prometheus` and `promtool` binaries
(scripts/install-system-deps installs it). Nothing here is mocked: the tests
talk to the same HTTP API Grafana and KEDA use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "k8s" / "monitoring" / "rules"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} not found: install Debian's 'prometheus' package "
            "(scripts/install-system-deps does it when run as root)"
        )
    return path


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """`prometheus` in a subprocess; `query` / `query_range` through its HTTP API."""

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, Sequence[str]] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        config = self._config(targets or {}, labels or {}, rule_files, interval)
        self.config.write_text(json.dumps(config, indent=2))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        data = data_dir if data_dir is not None else workdir / "data"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=30d",
                    "--log.level=warn",
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    @staticmethod
    def _config(
        targets: Mapping[str, Sequence[str]],
        labels: Mapping[str, str],
        rule_files: Sequence[Path],
        interval: str,
    ) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": list(addresses), "labels": dict(labels)}],
                }
                for job, addresses in targets.items()
            ],
        }

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log.read_text()}")

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError with Prometheus' own message."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} (query {params})")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("vector", "matrix"):
            result: list[dict[str, Any]] = data["result"]
            return result
        return [data]

    def value(self, promql: str, at: float | None = None) -> float:
        """The single value of an instant query that must return exactly one series."""
        result = self.query(promql, at)
        if len(result) != 1:
            raise PrometheusError(f"{promql}: expected one series, got {len(result)}: {result}")
        return float(result[0]["value"][1])

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=promql, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 30.0, at_least: int = 1) -> list[dict[str, Any]]:
        """Poll an instant query until it returns `at_least` series (scrapes take a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if len(result) >= at_least or time.monotonic() > deadline:
                return result
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )
