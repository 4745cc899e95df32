"""The web application's JSON API and /metrics, called in-process (WSGI), against real
SQLite and PostgreSQL databases holding history written through the real stores and by
real masters."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from freezegun import freeze_time
from harness import running_master, wait_for, write_config
from pg import url_text
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import URL, Engine, select, update

from pandaserver.config import load_config
from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_lease, daemon_run
from pandaserver.db.stores.heartbeat import HeartbeatStore
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.leases import LeaseStore
from pandaserver.db.stores.runcounts import insert_counted
from pandaserver.db.stores.runrecords import RunRecord
from pandaserver.service.hoststatus import local_status, render_local_status
from pandaserver.web.app import FleetApp
from pandaserver.web.metrics import DELAY_BUCKETS, DURATION_BUCKETS, HistoryCounters
from pandaserver.web.settings import WebSettings
from pandaserver.web.wsgi import LazyApplication

SCRIPTS = {
    "fresh": {"module": "record", "period": 10},
    "old": {"module": "record", "period": 10},
    "shared": {"module": "record", "period": 60, "sync": True},
    "never": {"module": "record", "period": 5},
}


def call(app: Callable[..., Any], path: str, method: str = "GET", prefix: str = "",
         query: str = "", extra: dict[str, str] | None = None) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method, "SCRIPT_NAME": prefix,
                               "QUERY_STRING": query, **(extra or {})}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}
    body = b"".join(app(environ, lambda status, headers: seen.update(s=status, h=headers)))
    return seen["s"], dict(seen["h"]), body


def get_json(app: FleetApp, path: str, **kwargs: Any) -> Any:
    status, headers, body = call(app, path, **kwargs)
    assert status == "200 OK", body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def metrics(app: FleetApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = call(app, "/metrics")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def config(tmp_path: Path, url: URL, scripts: dict[str, Any], extra: str = "",
           **daemon: Any) -> Path:
    daemon.setdefault("heartbeat_interval", 1)
    return write_config(tmp_path, scripts, db_url=url_text(url), extra=extra, **daemon)


@pytest.fixture
def fleet_db(db_engine: Engine) -> Engine:
    """History, heartbeats and a lease, written through the stores as masters write them."""
    history = HistoryStore(db_engine)
    with db_engine.connect() as conn:
        now = db_now(conn)
    history.record(RunRecord("fresh", "srv-a", 10, "ok", duration=0.25, ended_ago=2,
                             due_before_start=0.1))  # exact on the database clock
    history.record(RunRecord("fresh", "srv-b", 20, "failed", duration=1.5, ended_ago=1,
                             error="Traceback (most recent call last):\nValueError: bad row"))
    history.record(RunRecord("old", "srv-a", 10, "ok", duration=3.0, ended_ago=1000))
    history.record(RunRecord("shared", "srv-a", 10, "ok", generation=1, duration=0.5, ended_ago=3))
    # a row as masters wrote them before refusals were counted on the lease: still shown
    history.record(RunRecord("shared", "srv-b", 20, "skipped", error="lease held by srv-a",
                             ended_ago=3))
    beats = HeartbeatStore(db_engine)
    ahead = now + timedelta(seconds=300)  # srv-a's clock is 5 minutes ahead of the database's
    beats.beat("srv-a", 10, "0.1.0", ahead, "aaaa", server_time=ahead)
    beats.beat("srv-b", 20, "0.1.0", now, "aaaa", server_time=now - timedelta(seconds=0.5))
    beats.beat("srv-c", 30, "0.0.9", now, "cccc")
    assert LeaseStore(db_engine).try_acquire("shared", "srv-a", 10, 60, 120).granted
    # the refusals counted on the lease row (as the grant statement counts them), the latest
    # 5 s before the database's time of this write (not of the fixture's start: the writes
    # above may take seconds on a loaded machine)
    with db_engine.begin() as conn:
        conn.execute(update(daemon_lease).where(daemon_lease.c.name == "shared").values(
            contended=7, contended_by="srv-b",
            contended_at=db_now(conn) - timedelta(seconds=5)))
    return db_engine


@pytest.fixture
def app(fleet_db: Engine, db_url: URL, tmp_path: Path) -> FleetApp:
    cfg = load_config(str(config(tmp_path, db_url, SCRIPTS, heartbeat_interval=30)))
    fleet_app = FleetApp(cfg, WebSettings(stale_factor=3))
    fleet_app.reader.state_dir = tmp_path / "state"
    return fleet_app


def test_fleet_api_servers_clock_offsets_and_config_mismatch(app: FleetApp) -> None:
    data = get_json(app, "/api/fleet")
    servers = {s["server"]: s for s in data["servers"]}
    assert list(servers) == ["srv-a", "srv-b", "srv-c"]
    assert all(s["alive"] for s in servers.values())
    # the server's wall clock at its beat minus the database's clock at that beat
    assert servers["srv-a"]["clock_offset"] == pytest.approx(300, abs=2)
    assert servers["srv-b"]["clock_offset"] == pytest.approx(-0.5, abs=2)
    assert servers["srv-c"]["clock_offset"] is None
    assert [s for s, v in servers.items() if v["config_mismatch"]] == ["srv-c"]
    assert servers["srv-c"]["version"] == "0.0.9"
    assert data["summary"] == {"stale": ["old"], "late": ["old"], "config_mismatch": ["srv-c"],
                               "silent_servers": [], "paused": [],
                               "draining_servers": [], "crash_looping": {},
                               "log_failing": []}


def test_scripts_api_last_run_per_server_next_due_late_and_stale(app: FleetApp) -> None:
    scripts = {s["name"]: s for s in get_json(app, "/api/scripts")["scripts"]}
    assert sorted(scripts) == ["fresh", "never", "old", "shared"]
    fresh = scripts["fresh"]
    runs = {r["server"]: r for r in fresh["runs"]}
    assert (runs["srv-a"]["outcome"], runs["srv-b"]["outcome"]) == ("ok", "failed")
    assert runs["srv-a"]["duration"] == pytest.approx(0.25, abs=0.01)
    assert "ValueError: bad row" in runs["srv-b"]["error"]
    assert not fresh["late"] and not fresh["stale"] and fresh["since_success"] < 60
    assert -10 < fresh["overdue"] < 0  # next due within its period
    old = scripts["old"]
    assert old["late"] and old["stale"] and old["since_success"] > 999
    assert old["stale_after"] == 30 and old["runs"][0]["late"]
    shared = scripts["shared"]  # sync: due fleet-wide by its lease; the skip is not a "run"
    assert shared["sync"] and shared["lease_holder"] == "srv-a"
    assert [r["server"] for r in shared["runs"]] == ["srv-a"]
    assert shared["overdue"] == pytest.approx(-60, abs=5) and not shared["late"]
    never = scripts["never"]
    assert never["runs"] == [] and never["since_success"] is None and not never["stale"]


def test_api_figures_are_on_the_database_clock_whatever_this_hosts_says(
        app: FleetApp) -> None:
    with freeze_time("1999-12-31 23:59:59"):  # this host's clock is decades off
        scripts = {s["name"]: s for s in get_json(app, "/api/scripts")["scripts"]}
        servers = {s["server"]: s for s in get_json(app, "/api/fleet")["servers"]}
        runs = get_json(app, "/api/scripts/fresh")["runs"]
    assert scripts["fresh"]["since_success"] < 60 and -10 < scripts["fresh"]["overdue"] < 0
    assert scripts["old"]["since_success"] > 999 and scripts["old"]["stale"]
    assert all(s["alive"] for s in servers.values())
    assert servers["srv-a"]["clock_offset"] == pytest.approx(300, abs=2)
    assert runs and not any(r["started_at"].startswith("1999") for r in runs)


def test_one_script_api_runs_and_unknown_names(app: FleetApp) -> None:
    data = get_json(app, "/api/scripts/shared")
    assert data["script"]["name"] == "shared"
    assert sorted((r["server"], r["outcome"]) for r in data["runs"]) == [("srv-a", "ok"),
                                                                         ("srv-b", "skipped")]
    assert len(get_json(app, "/api/scripts/shared", query="limit=1")["runs"]) == 1
    status, _, body = call(app, "/api/scripts/nosuch")
    assert status == "404 Not Found" and "nosuch" in json.loads(body)["error"]
    leases = get_json(app, "/api/leases")["leases"]
    assert [(lease["name"], lease["held"], lease["owner_server"]) for lease in leases] == [
        ("shared", True, "srv-a")]
    assert (leases[0]["contended"], leases[0]["contended_by"]) == (7, "srv-b")
    assert leases[0]["contended_ago"] == pytest.approx(5, abs=3)
    assert set(get_json(app, "/api")) >= {"/api/fleet", "/api/scripts", "/api/leases"}


def test_pages_are_read_only_prefixed_and_self_contained(app: FleetApp) -> None:
    status, headers, _ = call(app, "/scripts", method="POST")
    assert status.startswith("405") and headers["Allow"] == "GET, HEAD"
    for path in ("/", "/scripts", "/scripts/old", "/leases"):
        status, headers, body = call(app, path, prefix="/daemon")
        assert status == "200 OK", path
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        page = body.decode()
        assert 'href="/daemon/static/panda-web.css"' in page
        assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in page
    status, headers, body = call(app, "/static/refresh.js")
    assert status == "200 OK" and b"setInterval" in body
    assert call(app, "/static/../app.py")[0].startswith("404")
    _, _, page = call(app, "/scripts")
    assert 'data-script="old"' in page.decode() and 'class="script stale"' in page.decode()
    _, _, page = call(app, "/leases")
    row = page.decode().split('data-lease="shared"')[1].split("</tr>")[0]
    assert '<td class="contended">7</td><td>srv-b</td>' in row and " ago</td>" in row
    _, _, page = call(app, "/", prefix="/daemon")
    assert "refused grant attempts 7</span> (most: shared 7, latest by srv-b" in page.decode()
    assert 'href="/daemon/leases">Leases</a>' in page.decode()


def test_metrics_from_the_history(app: FleetApp) -> None:
    m = metrics(app)
    runs = {labels: v for (name, labels), v in m.items() if name == "panda_daemon_runs_total"}
    assert runs == {
        (("outcome", "failed"), ("script", "fresh"), ("server", "srv-b")): 1.0,
        (("outcome", "ok"), ("script", "fresh"), ("server", "srv-a")): 1.0,
        (("outcome", "ok"), ("script", "old"), ("server", "srv-a")): 1.0,
        (("outcome", "ok"), ("script", "shared"), ("server", "srv-a")): 1.0,
        (("outcome", "skipped"), ("script", "shared"), ("server", "srv-b")): 1.0,
    }
    # the old skipped rows still count here; refusals now count on the lease row
    assert m[("panda_daemon_lease_contention_total",
              (("script", "shared"), ("server", "srv-b")))] == 1
    shared = (("script", "shared"),)
    assert m[("panda_daemon_lease_contended_total", shared)] == 7
    assert m[("panda_daemon_lease_contended_by", (*shared, ("server", "srv-b")))] == 1
    assert m[("panda_daemon_lease_contended_age_seconds", shared)] == pytest.approx(5, abs=3)
    fresh = (("script", "fresh"),)
    assert m[("panda_daemon_run_duration_seconds_count", fresh)] == 2
    assert m[("panda_daemon_run_duration_seconds_sum", fresh)] == pytest.approx(1.75, abs=0.01)
    assert m[("panda_daemon_run_duration_seconds_bucket", (("le", "0.5"), *fresh))] == 1
    assert m[("panda_daemon_run_duration_seconds_bucket", (("le", "5"), *fresh))] == 2
    assert m[("panda_daemon_dispatch_delay_seconds_count", fresh)] == 1
    assert m[("panda_daemon_dispatch_delay_seconds_sum", fresh)] == pytest.approx(0.1, abs=0.05)
    assert m[("panda_daemon_lease_grants_total", (("script", "shared"),))] == 1
    assert m[("panda_daemon_script_stale", (("script", "old"),))] == 1
    assert m[("panda_daemon_script_stale", fresh)] == 0
    assert m[("panda_daemon_script_late", (("script", "old"),))] == 1
    assert m[("panda_daemon_script_seconds_since_last_success",
              (("script", "old"),))] == pytest.approx(1000, abs=30)
    assert ("panda_daemon_script_seconds_since_last_success", (("script", "never"),)) not in m
    assert m[("panda_daemon_server_clock_offset_seconds",
              (("server", "srv-a"),))] == pytest.approx(300, abs=2)
    assert m[("panda_daemon_server_config_mismatch", (("server", "srv-c"),))] == 1
    assert m[("panda_daemon_database_up", ())] == 1
    assert m[("panda_daemon_web_database_errors_total", ())] == 0


def test_counters_never_go_down_when_history_is_pruned(db_engine: Engine) -> None:
    history = HistoryStore(db_engine)
    counters = HistoryCounters()
    history.record(RunRecord("s", "srv", 1, "ok", duration=0.1))

    def total() -> float:
        with db_engine.connect() as conn:
            return sum(v[0] for v in counters.read(conn)["runs"].values())

    assert total() == 1
    history.record(RunRecord("s", "srv", 1, "ok", duration=0.1, ended_ago=3600))
    assert total() == 2
    # prune what is older than half an hour, then every row
    assert history.prune(older_than_days=1800 / 86400) == 1
    assert total() == 2
    assert history.prune(older_than_days=0) == 1
    assert total() == 2
    # a new web process (new counters object) starts from the same counts, not from zero
    assert sum(v[0] for v in _read(db_engine)["runs"].values()) == 2


def _read(engine: Engine) -> dict[str, dict[tuple[str, ...], list[float]]]:
    with engine.connect() as conn:
        return HistoryCounters().read(conn)


def _python_families(rows: list[Any]) -> dict[str, dict[tuple[str, ...], list[float]]]:
    """What /metrics' counters must hold, computed in plain Python from the rows."""
    out: dict[str, dict[tuple[str, ...], list[float]]] = {"runs": {}, "durations": {},
                                                          "delays": {}}

    def add(family: str, key: tuple[str, ...], value: float | None,
            buckets: tuple[float, ...]) -> None:
        have = out[family].setdefault(key, [0.0] * (2 + len(buckets)))
        have[0] += 1
        if value is not None:
            have[1] += value
            for i, bucket in enumerate(buckets):
                have[2 + i] += value <= bucket

    for r in rows:
        if r.outcome == "running":
            continue
        key = (r.script, r.server, r.outcome)
        out["runs"][key] = [out["runs"].get(key, [0.0])[0] + 1]
        if r.outcome in ("ok", "failed", "timeout"):
            add("durations", (r.script,), None if r.ended_at is None
                else (r.ended_at - r.started_at).total_seconds(), DURATION_BUCKETS)
        if r.due_at is not None and r.outcome != "skipped":
            add("delays", (r.script,), (r.started_at - r.due_at).total_seconds(), DELAY_BUCKETS)
    return out


def test_metrics_sums_in_sql_equal_a_python_count_of_the_rows(db_engine: Engine) -> None:
    """Durations and delays exactly on every bucket's edge and one microsecond each side,
    on several servers and outcomes, NULL due times, skipped and running rows: the
    counters' bucketing and sums equal a plain count over the same rows."""
    with db_engine.connect() as conn:
        now = db_now(conn).replace(microsecond=0) - timedelta(hours=1)
    us = timedelta(microseconds=1)
    rows: list[dict[str, Any]] = []
    outcomes = ["ok", "failed", "timeout", "lost", "killed", "skipped", "running"]
    for i, edge in enumerate(DURATION_BUCKETS + DELAY_BUCKETS):
        for j, nudge in enumerate((-us, 0 * us, us)):
            started = now - timedelta(seconds=10 * i, milliseconds=j)
            length = timedelta(seconds=edge) + nudge
            outcome = outcomes[(i + j) % len(outcomes)]
            rows.append({"script": f"s{i % 3}", "server": f"srv-{j}", "outcome": outcome,
                         "started_at": started,
                         "ended_at": None if outcome == "running" else started + length,
                         "due_at": None if (i + j) % 5 == 0 else started - length})
    with db_engine.begin() as conn:  # inserted and counted as a writer does it
        insert_counted(conn, rows)
    with db_engine.connect() as conn:
        got = HistoryCounters().read(conn)
        stored = conn.execute(select(daemon_run)).all()
    want = _python_families(list(stored))
    assert set(got) == set(want)
    for family, sums in want.items():
        assert set(got[family]) == set(sums), family
        for key, values in sums.items():
            assert got[family][key] == pytest.approx(values, abs=1e-6), (family, key)
    # the bucket edges matter: counted with < instead of <=, some differ
    assert any(v[2:] != [v[0]] * (len(v) - 2) for v in want["durations"].values())


def test_metrics_text_is_what_prometheus_client_writes_of_the_families(app: FleetApp) -> None:
    """/metrics writes the history's families straight from their sums: byte for byte what
    prometheus_client's generate_latest makes of the same families, on the fixture's
    history and on sums with labels that need escaping and values of every shape."""
    collector = app.collector
    scrape = collector.read()
    assert scrape.overview is not None and scrape.sums["durations"]

    class Families:
        def __init__(self, scrape: Any) -> None:
            self.scrape = scrape

        def collect(self) -> Any:
            return collector.families(self.scrape)

    assert collector.text(scrape) == generate_latest(Families(scrape))  # type: ignore[arg-type]
    odd = 'a"b\\c\nd é'
    width = {"durations": 2 + len(DURATION_BUCKETS), "delays": 2 + len(DELAY_BUCKETS)}
    sums = {
        "runs": {(odd, "srv", "skipped"): [3.0], ("s", odd, "ok"): [1e7], ("s", "x", "lost"): [0.0]},
        **{family: {(odd,): [5.0, 1234567.125, *range(n - 2)], ("z",): [0.0] * n}
           for family, n in width.items()},
    }
    weird = replace(scrape, sums=sums)
    assert collector.text(weird) == generate_latest(Families(weird))  # type: ignore[arg-type]


def test_one_script_view_equals_its_view_in_the_fleet_overview(app: FleetApp) -> None:
    overview = app.reader.overview()
    names = [v.name for v in overview.scripts]
    assert {"fresh", "old", "shared", "never"} <= set(names)
    def timeless(view: Any) -> Any:  # what moves with the database's clock between reads
        runs = [replace(run, overdue=None) for run in view.runs]
        return replace(view, runs=runs, overdue=None, since_success=None)

    for view in overview.scripts:
        alone = app.reader.script(view.name, 10).script
        assert alone is not None and timeless(alone) == timeless(view)
        assert (alone.overdue is None) == (view.overdue is None)
        assert (alone.since_success is None) == (view.since_success is None)
    assert app.reader.script("nowhere", 10).script is None


def test_database_down_gives_503_pages_and_metrics_that_say_so(tmp_path: Path) -> None:
    url = URL.create("postgresql+psycopg2", username="u", password="s3cret-pw",
                     host="127.0.0.1", port=9, database="nope")
    cfg = load_config(str(config(tmp_path, url, SCRIPTS)))
    app = FleetApp(cfg)
    status, _, body = call(app, "/scripts")
    assert status.startswith("503") and b"database unavailable" in body
    assert b"s3cret-pw" not in body
    status, _, body = call(app, "/api/fleet")
    assert status.startswith("503") and "s3cret-pw" not in json.loads(body)["error"]
    m = metrics(app)
    assert m[("panda_daemon_database_up", ())] == 0
    assert m[("panda_daemon_web_database_errors_total", ())] == 1


def test_wsgi_entry_finds_the_config_in_the_request_environment(
        fleet_db: Engine, db_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PANDA_DAEMON_CONFIG", raising=False)
    monkeypatch.setenv("PANDA_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PANDA_DAEMON_STATE_DIR", str(tmp_path / "state"))  # restored after
    entry = LazyApplication()
    status, _, body = call(entry, "/api/fleet", extra={"PANDA_DAEMON_CONFIG": str(tmp_path / "x")})
    assert status.startswith("500") and b"cannot read the configuration" in body
    path = config(tmp_path, db_url, SCRIPTS, extra="[daemon_web]\nstale_factor = 200\n")
    status, _, body = call(entry, "/api/scripts", prefix="/daemon",
                           extra={"PANDA_DAEMON_CONFIG": str(path)})
    assert status == "200 OK"
    data = json.loads(body)
    assert data["stale_factor"] == 200  # [daemon_web] of the file was read
    assert not any(s["stale"] for s in data["scripts"])


def test_real_masters_history_status_and_workers(db_url: URL, db_engine: Engine,
                                                 tmp_path: Path) -> None:
    scripts = {"quick": {"module": "record", "period": 0.3},
               "broken": {"module": "fail", "period": 0.3},
               "shared": {"module": "record", "period": 0.3, "sync": True}}
    path = config(tmp_path, db_url, scripts)
    cfg = load_config(str(path))
    upgrade(db_engine)
    app = FleetApp(cfg, WebSettings())
    app.reader.state_dir = tmp_path / "state"  # where the harness's masters write status
    history = HistoryStore(db_engine)
    with running_master(path, tmp_path, server="real-1") as one, \
            running_master(path, tmp_path, server="real-2") as two:
        wait_for(lambda: any(r.outcome == "ok" for r in history.query("shared", 100))
                 and len({r.server for r in history.query("broken", 100)}) == 2
                 and len(history.query("broken", 100)) >= 4, 30,
                 lambda: f"runs of both masters\n{one.log()[-2000:]}")
        fleet = wait_for(lambda: (d := get_json(app, "/api/fleet")) and len(d["servers"]) == 2
                         and len(d["local_masters"]) == 2 and d, 15, "two heartbeats")
        assert {m["server"]: m["workers_alive"] for m in fleet["local_masters"]} == {
            "real-1": 2, "real-2": 2}
        text = render_local_status(local_status("real-1", tmp_path / "state") or {})
        assert "master real-1" in text and "workers (2 of n_proc 2)" in text
        assert "quick" in text and "broken" in text
        m = metrics(app)
        assert m[("panda_daemon_workers_alive", (("server", "real-1"),))] == 2
        # refused lease attempts of each local master (from its status file)
        assert all(m[("panda_daemon_master_lease_refused_total", (("server", name),))] >= 0
                   for name in ("real-1", "real-2"))
        # never a success: stale once its first run is more than 3 x 0.3 s old
        wait_for(lambda: get_json(app, "/api/scripts/broken")["script"]["stale"], 10,
                 "the failing script to become stale")
        # quick succeeds every 0.3 s: fresh (a loaded machine may delay one run past 0.9 s)
        wait_for(lambda: not get_json(app, "/api/scripts/quick")["script"]["stale"], 10,
                 "the succeeding script to be fresh")
        # stopped, not killed: a killed master's last writes are not in the database (a sync
        # run's row, written by its grant, would be left open)
        assert one.stop() == 0 and two.stop() == 0
    # the masters are stopped: what the database holds is final
    rows = history.query(None, 10000)
    assert {r.outcome for r in rows} <= {"ok", "failed"}  # a refused attempt is not a run
    m = metrics(app)
    for script in scripts:
        for server in ("real-1", "real-2"):
            for outcome in ("ok", "failed"):
                expected = sum(1 for r in rows if (r.script, r.server, r.outcome) ==
                               (script, server, outcome))
                labels = (("outcome", outcome), ("script", script), ("server", server))
                assert m.get(("panda_daemon_runs_total", labels), 0) == expected
    # the masters record each run's due time: its dispatch delay is in the histogram
    timed = [r for r in rows if r.script == "quick" and r.due_at is not None]
    quick = (("script", "quick"),)
    assert timed and m[("panda_daemon_dispatch_delay_seconds_count", quick)] == len(timed)
    assert m[("panda_daemon_dispatch_delay_seconds_sum", quick)] == pytest.approx(
        sum((r.started_at - r.due_at).total_seconds() for r in timed if r.due_at), abs=0.01)
    broken = get_json(app, "/api/scripts/broken")
    assert {r["outcome"] for r in broken["runs"]} == {"failed"}
    assert "deliberate failure" in broken["runs"][0]["error"]
    scripts_view = {s["name"]: s for s in get_json(app, "/api/scripts")["scripts"]}
    assert scripts_view["quick"]["since_success"] is not None
    assert {r["server"] for r in scripts_view["quick"]["runs"]} == {"real-1", "real-2"}
    assert scripts_view["broken"]["since_success"] is None
    # stopped: quick's last success ages; it is stale only once 3 x 0.3 s have passed
    quick = scripts_view["quick"]
    assert quick["stale"] == (quick["since_success"] > quick["stale_after"]), quick
