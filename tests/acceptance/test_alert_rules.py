"""The shipped Prometheus alert rules (etc/prometheus/panda-daemon-alerts.yml), checked and
unit-tested with promtool against series scraped from real masters: two masters on a real
PostgreSQL (with different configurations) run a failing, a crash-looping, a hung sync and
two healthy scripts; the web application's /metrics is scraped while both live, after one
is stopped, and while the database is cut. Each scrape becomes one step of the promtool
test's input series, so every value the rules see is one the daemon wrote."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from harness import REPO, running_master, wait_for
from pg import PgCluster
from pgfleet import cut, fleet_config, restore
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import URL

from pandaserver.config import load_config
from pandaserver.daemons.fleet.rank import order
from pandaserver.web.app import FleetApp
from pandaserver.web.settings import WebSettings

RULES = REPO / "etc" / "prometheus" / "panda-daemon-alerts.yml"
STEP_MINUTES = 5  # one scrape per 5 minutes of the promtool test's time
LIVE, SILENT, OUTAGE = 12, 4, 4  # scrapes in each phase
FAST = {"heartbeat_interval": 1, "command_interval": 0.5, "n_proc": 3}
SCRIPTS: dict[str, dict[str, Any]] = {
    "quick": {"module": "record", "period": 0.3},
    "broken": {"module": "fail", "period": 0.3},
    "crashy": {"module": "dies_in_worker", "period": 0.2},
    "stuck": {"module": "hang", "period": 0.3, "sync": True, "timeout": 3600,
              "arguments": ["stuck"]},
    "shared": {"module": "record", "period": 0.3, "sync": True},
}
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:  # a failure, not a skip: CI installs it (tests/run-all.sh)
        pytest.fail("promtool is missing: install the Debian package prometheus"
                    " (tests/run-all.sh does)")
    return found


def scrape(app: FleetApp) -> Series:
    environ: dict[str, Any] = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    seen: dict[str, str] = {}
    body = b"".join(app(environ, lambda status, headers: seen.update(status=status)))
    assert seen["status"] == "200 OK", body
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, tuple(sorted(labels.items()))))


def scrapes(app: FleetApp, count: int, moved: Callable[[Series, Series], bool],
            until: Callable[[list[Series]], bool] = lambda taken: True,
            timeout: float = 90) -> list[Series]:
    """The last ``count`` of scrapes each taken once ``moved(previous, now)`` says the fleet
    moved, taken until there are ``count`` and ``until(last count)`` holds."""
    deadline = time.monotonic() + timeout
    taken = [scrape(app)]
    while len(taken) < count or not until(taken[-count:]):
        assert time.monotonic() < deadline, (
            f"timed out after {timeout} s of scrapes: {len(taken)} taken, the last"
            f" {[{k[0]: v for k, v in taken[-1].items() if 'lease' in k[0]}]}")
        taken.append(wait_for(lambda: (s := scrape(app)) and moved(taken[-1], s) and s, 30,
                              "the fleet to move between two scrapes"))
    return taken[-count:]


def input_series(taken: list[Series]) -> list[dict[str, str]]:
    """promtool's input_series: one value per scrape, '_' where a scrape lacked the series."""
    keys = sorted({key for series in taken for key in series})
    out = []
    for name, labels in keys:
        shown = ",".join(f'{k}="{v}"' for k, v in labels)
        values = " ".join(repr(s[(name, labels)]) if (name, labels) in s else "_"
                          for s in taken)
        out.append({"series": f"{name}{{{shown}}}", "values": values})
    return out


def annotations() -> dict[str, dict[str, str]]:
    """Each alert's annotation templates, as the rules file writes them."""
    out: dict[str, dict[str, str]] = {}
    alert = ""
    for line in RULES.read_text().splitlines():
        if found := re.match(r"\s*- alert: (\w+)", line):
            alert = found.group(1)
            out[alert] = {}
        elif found := re.match(r"\s+(summary|runbook): (\".*\")$", line):
            out[alert][found.group(1)] = json.loads(found.group(2))
    return out


def expected(alert: str, **labels: str) -> dict[str, Any]:
    """An alert as promtool reports it: its labels and its annotations filled in."""
    severity = {"PandaDaemonServerSilent": "warning", "PandaDaemonConfigDrift": "warning",
                "PandaDaemonLeaseRefusedOverAndOver": "warning"}.get(alert, "critical")
    filled = {key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
              for key, text in annotations()[alert].items()}
    return {"exp_labels": {**labels, "severity": severity}, "exp_annotations": filled}


def at(step: int) -> str:
    return f"{step * STEP_MINUTES}m"


def test_alert_rules_are_valid() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    assert all(set(found) == {"summary", "runbook"} for found in annotations().values())


def test_alert_rules_fire_on_what_real_masters_export(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    tool = promtool()
    cfg = fleet_config(tmp_path, pg_url, SCRIPTS, **FAST)
    (tmp_path / "b").mkdir()  # b's configuration differs: config drift
    cfg_b = fleet_config(tmp_path / "b", pg_url, {**SCRIPTS, "quick": {
        "module": "record", "period": 0.4}}, **FAST)
    app = FleetApp(load_config(str(cfg)), WebSettings(stale_factor=3))
    app.reader.state_dir = tmp_path / "state"  # where the masters write their status

    def contended(s: Series) -> float:
        return value(s, "panda_daemon_lease_contended_total", script="stuck") or 0.0

    def ran(s: Series, server: str) -> float | None:
        return value(s, "panda_daemon_runs_total", script="quick", server=server, outcome="ok")

    with ExitStack() as stack:
        stack.enter_context(running_master(cfg, tmp_path, server="a"))
        # b is stuck's preferred server (rank.order('stuck', 'ab') == ['b', 'a']): only if a
        # holds the hung run's lease does b ask for it every period and get refused; had b
        # taken it first, a would only look at the lease table and nothing would be refused
        assert order("stuck", ["a", "b"])[0] == "b"
        wait_for(lambda: value(scrape(app), "panda_daemon_lease_held", script="stuck",
                               server="a") == 1, 30, "a to hold stuck's lease")
        b = stack.enter_context(running_master(cfg_b, tmp_path, server="b"))

        def unsettled(s: Series) -> list[str]:
            """What the fleet does not show yet (empty once it shows all of it)."""
            checks = {
                "broken stale": value(s, "panda_daemon_script_stale", script="broken") == 1,
                "quick fresh": value(s, "panda_daemon_script_stale", script="quick") == 0,
                "crashy crash-looping on a and b": all(value(
                    s, "panda_daemon_script_crash_looping", script="crashy", server=name) == 1
                    for name in "ab"),
                "b's configuration flagged": value(
                    s, "panda_daemon_server_config_mismatch", server="b") == 1,
                "stuck's lease held": any(value(
                    s, "panda_daemon_lease_held", script="stuck", server=name) == 1
                    for name in "ab"),
            }
            return [what for what, shown in checks.items() if not shown]

        last: list[Series] = []
        try:
            wait_for(lambda: last.append(scrape(app)) or not unsettled(last[-1]), 60)
        except AssertionError:
            raise AssertionError(f"/metrics does not show: {unsettled(last[-1])}") from None
        # a scrape per run of quick on a, until the hung run's lease was refused (a refusal
        # comes once its lease could have expired) in the first half of the scrapes: each is
        # 5 min of the rules' test, and the alert (for: 5m) must fire by the last one
        live = scrapes(app, LIVE, lambda old, new: ran(new, "a") != ran(old, "a"),
                       lambda taken: contended(taken[0]) < contended(taken[len(taken) // 2]))
        grants = {value(s, "panda_daemon_lease_grants_total", script="stuck") for s in live}
        assert len(grants) == 1, f"the hung run's lease was granted again: {grants}"
        assert b.stop() == 0
        wait_for(lambda: value(scrape(app), "panda_daemon_server_up", server="b") == 0, 30,
                 "b to be silent")
        silent = scrapes(app, SILENT, lambda old, new: ran(new, "a") != ran(old, "a"))
        cut(pg_cluster, pg_url.database or "")
        stack.callback(restore, pg_cluster, pg_url.database or "")
        wait_for(lambda: value(s := scrape(app), "panda_daemon_database_up") == 0 and value(
            s, "panda_daemon_master_database_available", server="a") == 0, 60,
            "the database outage in /metrics")
        outage = [scrape(app) for _ in range(OUTAGE)]

    end_live, end_silent, end_outage = LIVE - 1, LIVE + SILENT - 1, LIVE + SILENT + OUTAGE - 1
    not_succeeding = [expected("PandaDaemonScriptNotSucceeding", script=name)
                      for name in ("broken", "crashy", "stuck")]
    tests = [
        {"eval_time": at(end_live), "alertname": "PandaDaemonScriptNotSucceeding",
         "exp_alerts": not_succeeding},
        {"eval_time": at(end_live), "alertname": "PandaDaemonScriptCrashLooping",
         "exp_alerts": [expected("PandaDaemonScriptCrashLooping", script="crashy", server=name)
                        for name in "ab"]},
        # two servers, two configurations: neither is the majority, both are flagged
        {"eval_time": at(end_live), "alertname": "PandaDaemonConfigDrift",
         "exp_alerts": [expected("PandaDaemonConfigDrift", server=name) for name in "ab"]},
        {"eval_time": at(end_live), "alertname": "PandaDaemonLeaseRefusedOverAndOver",
         "exp_alerts": [expected("PandaDaemonLeaseRefusedOverAndOver", script="stuck")]},
        {"eval_time": at(end_live), "alertname": "PandaDaemonServerSilent", "exp_alerts": []},
        {"eval_time": at(end_live), "alertname": "PandaDaemonDatabaseDown", "exp_alerts": []},
        {"eval_time": at(end_silent), "alertname": "PandaDaemonServerSilent",
         "exp_alerts": [expected("PandaDaemonServerSilent", server="b")]},
        {"eval_time": at(end_silent), "alertname": "PandaDaemonConfigDrift", "exp_alerts": []},
        {"eval_time": at(end_silent), "alertname": "PandaDaemonScriptNotSucceeding",
         "exp_alerts": not_succeeding},
        {"eval_time": at(end_outage), "alertname": "PandaDaemonDatabaseDown",
         "exp_alerts": [expected("PandaDaemonDatabaseDown"),
                        expected("PandaDaemonDatabaseDown", server="a")]},
        # the fleet's series are gone while the database is: nothing fires on them
        {"eval_time": at(end_outage), "alertname": "PandaDaemonScriptNotSucceeding",
         "exp_alerts": []},
    ]
    suite = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [
        {"interval": f"{STEP_MINUTES}m", "input_series": input_series(live + silent + outage),
         "alert_rule_test": tests}]}
    path = tmp_path / "alerts-test.yml"
    path.write_text(json.dumps(suite, indent=1))  # JSON is YAML
    result = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
