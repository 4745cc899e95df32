"""The fleet pages in a real headless Chromium, served by the real ``panda-daemon web``
(gunicorn, started with ``--detach`` and ended with ``--stop``), over a database holding
the history of real masters plus a script that is late and stale.

Screenshots are kept in tests/artifacts/. Chromium is Debian's ``chromium`` package
(tests/run-all.sh installs it); without it these tests fail, they are never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import REPO, pid_alive, running_master, script_env, wait_for, write_config
from sqlalchemy import URL

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.stores.heartbeat import HeartbeatStore
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.runrecords import RunRecord

ARTIFACTS = REPO / "tests" / "artifacts"
SCRIPTS = {"quick": {"module": "record", "period": 1.0},
           "broken": {"module": "fail", "period": 0.7},
           "shared": {"module": "record", "period": 0.5, "sync": True}}
# stale after 100 periods: "quick" stays fresh for 100 s after the masters stop
WEB_SECTION = "[daemon_web]\nrefresh = 1\nstale_factor = 100\n"


# --- a small DOM of what Chromium dumped -------------------------------------------------

@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str, cls: str | None = None, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag and (cls is None or cls in n.classes)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}


class DomBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text += data


def dom(html: str) -> Node:
    builder = DomBuilder()
    builder.feed(html)
    return builder.root


# --- Chromium ----------------------------------------------------------------------------

def chromium(url: str, profile: Path, *args: str) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium package is needed for the page tests and is not"
                    " installed (apt-get install -y chromium; tests/run-all.sh does it)",
                    pytrace=False)
    command = [exe, "--headless", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args, url]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:  # nothing of this browser may outlive the call
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        left = [p for p in psutil.process_iter(["cmdline"])
                if any(str(profile) in part for part in p.info["cmdline"] or [])]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {err[-2000:]}"
    return out


def dump(server: Server, path: str, *args: str) -> Node:
    server.visits += 1
    return dom(chromium(server.url + path, server.root / f"profile-{server.visits}",
                        "--dump-dom", *args))


def screenshot(server: Server, path: str, name: str, size: str = "1400,1000") -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    server.visits += 1
    chromium(server.url + path, server.root / f"profile-{server.visits}",
             f"--screenshot={target}", f"--window-size={size}")
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000, "not a real screenshot"
    return target


# --- the fleet and the server ------------------------------------------------------------

@dataclass
class Server:
    url: str
    root: Path
    visits: int = 0

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web")
    url = URL.create("sqlite", database=str(root / "fleet.sqlite"))
    cfg = write_config(root, SCRIPTS, db_url=str(url), heartbeat_interval=1)
    engine = engine_from_url(url)
    history = HistoryStore(engine)
    try:
        with running_master(cfg, root, server="alpha") as alpha, \
                running_master(cfg, root, server="beta"):
            alpha.wait_events(3, "end", "quick", timeout=30)
            wait_for(lambda: len(alpha.events("start", "broken")) >= 2, 30, "failed runs")
            wait_for(lambda: sum(1 for r in history.query("shared", 500) if r.outcome == "ok")
                     >= 2, 30, "sync runs")
        # a script whose runs stopped long ago (its period is 20 s): late, and stale
        for server_name, ago in (("alpha", 5000), ("beta", 4000)):
            history.record(RunRecord("stopped", server_name, 1, "ok", duration=4, ended_ago=ago))
    finally:
        engine.dispose()
    # the web server's configuration names it too; with its heartbeat_interval of 60 s the
    # stopped masters count as alive for 3 minutes (so their scripts can be late)
    write_config(root, {**SCRIPTS, "stopped": {"module": "record", "period": 20}},
                 db_url=str(url), heartbeat_interval=60, extra=WEB_SECTION)
    env = script_env(root / "web.jsonl")
    port = free_port()
    pidfile = root / "web.pid"
    command = [sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg), "web",
               "--bind", f"127.0.0.1:{port}", "--pidfile", str(pidfile)]
    started = subprocess.run([*command, "--detach", "--log-file", str(root / "web.log")],
                             capture_output=True, text=True, env=env, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(pidfile.read_text())
    try:
        yield Server(f"http://127.0.0.1:{port}", root)
    finally:
        stopped = subprocess.run([*command, "--stop"], capture_output=True, text=True, env=env,
                                 timeout=60)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not pid_alive(pid) and not pidfile.exists()
        gunicorn_left = [p.pid for p in psutil.process_iter(["cmdline"])
                         if str(pidfile) in " ".join(p.info["cmdline"] or [])]
        assert not gunicorn_left, f"web server processes left: {gunicorn_left}"


def engine_for(server: Server) -> Any:
    return engine_from_url(URL.create("sqlite", database=str(server.root / "fleet.sqlite")))


# --- the tests ---------------------------------------------------------------------------

def test_scripts_page_shows_last_run_per_server_and_highlights_late_and_stale(
        server: Server) -> None:
    page = dump(server, "/scripts")
    bodies = {b.attrs["data-script"]: b for b in page.find("tbody", "script")}
    assert sorted(bodies) == ["broken", "quick", "shared", "stopped"]
    api = {s["name"]: s for s in server.api("/api/scripts")["scripts"]}
    for name, body in bodies.items():
        rows = body.find("tr", "server-run")
        assert sorted(r.attrs["data-server"] for r in rows) == sorted(
            r["server"] for r in api[name]["runs"]), name
    quick = bodies["quick"]
    assert {r.attrs["data-server"] for r in quick.find("tr", "server-run")} == {"alpha", "beta"}
    assert [td.all_text() for td in quick.find("td", "outcome")] == ["ok", "ok"]
    assert "stale" not in quick.classes  # the masters stopped moments ago
    stopped = bodies["stopped"]
    assert "stale" in stopped.classes and "late" in {c for r in stopped.find("tr", "server-run")
                                                     for c in r.classes}
    assert {b.all_text() for b in stopped.find("span", "badge")} >= {"STALE", "LATE"}
    broken = bodies["broken"]
    assert {td.all_text() for td in broken.find("td", "outcome")} == {"failed"}
    assert broken.find("td", "success")[0].all_text() == "never"
    alerts = page.find("ul", "alerts")[0].all_text()
    assert "stopped" in alerts
    shot = screenshot(server, "/scripts", "scripts.png")
    assert shot.stat().st_size > 20000


def test_script_page_timeline_has_a_mark_per_run_per_server(server: Server) -> None:
    api = server.api("/api/scripts/quick?limit=200")
    page = dump(server, "/scripts/quick")
    (svg,) = page.find("svg", id="timeline")
    lanes = [t.all_text() for t in svg.find("text", "lane-label") if t.all_text() != "duration"]
    assert lanes == sorted({r["server"] for r in api["runs"]}) == ["alpha", "beta"]
    bars = svg.find("rect", "run")
    finished = [r for r in api["runs"] if r["ended_at"] is not None]
    assert sorted(int(b.attrs["data-run-id"]) for b in bars) == sorted(r["id"] for r in api["runs"])
    by_id = {r["id"]: r for r in api["runs"]}
    for bar in bars:
        run = by_id[int(bar.attrs["data-run-id"])]
        assert bar.attrs["data-server"] == run["server"]
        assert bar.attrs["data-outcome"] == run["outcome"] == "ok"
        assert float(bar.attrs["data-duration"]) == pytest.approx(run["duration"], abs=0.002)
        assert float(bar.attrs["width"]) >= 2
    assert len(svg.find("circle", "dot")) == len(finished)
    rows = page.find("tr", "run")
    assert [int(r.attrs["data-run-id"]) for r in rows] == [r["id"] for r in api["runs"]]
    # the failing script's bars and its error, as the timeline and the table show them
    broken = dump(server, "/scripts/broken")
    assert {b.attrs["data-outcome"] for b in broken.find("rect", "run")} == {"failed"}
    assert "deliberate failure" in broken.find("table", "runs")[0].all_text()
    screenshot(server, "/scripts/quick", "timeline.png", "1300,900")


def test_pages_refresh_themselves_and_load_nothing_from_elsewhere(server: Server) -> None:
    before = server.api("/api/fleet")
    engine = engine_for(server)
    try:  # a third server with another configuration appears while the page is open
        HeartbeatStore(engine).beat("gamma", 7, "0.0.1", _db_now(engine), "f" * 64)
    finally:
        engine.dispose()
    page = dump(server, "/", "--virtual-time-budget=4000")
    body = page.find("body")[0]
    assert "data-refreshed" in body.attrs, "the page did not refresh itself"
    rows = {r.attrs["data-server"]: r for r in page.find("tr", "server")}
    assert set(rows) == {s["server"] for s in before["servers"]} | {"gamma"}
    assert "mismatch" in rows["gamma"].find("td", "hash")[0].classes
    assert not rows["alpha"].find("td", "mismatch")
    for node in page.walk():
        for attr in ("src", "href"):
            value = node.attrs.get(attr, "")
            assert not value.startswith(("http:", "https:", "//")), f"external asset: {value}"
    leases = dump(server, "/leases")
    assert [r.attrs["data-lease"] for r in leases.find("tr", "lease")] == ["shared"]
    screenshot(server, "/", "fleet.png", "1400,700")


def _db_now(engine: Any) -> Any:
    from pandaserver.db.base.servertime import db_now

    with engine.connect() as conn:
        return db_now(conn)
