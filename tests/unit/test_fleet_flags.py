"""What the fleet views say of a paused or crash-looping script: a pause is not staleness
(script_views, fleet --check), and the scripts list and script page show both as badges."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pandaserver.commands.web import check_text
from pandaserver.config.scripts import DaemonSpec
from pandaserver.db.stores.heartbeat import ServerRow
from pandaserver.db.stores.operator_commands import Hold
from pandaserver.exitcodes import CHECK_CRITICAL, CHECK_OK
from pandaserver.web.fleetview import Overview, ScriptDetail
from pandaserver.web.model import ScriptFacts, script_views, server_views
from pandaserver.web.pages import script_page, scripts_page

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def servers(looping: tuple[str, ...] = ()) -> list[ServerRow]:
    state = json.dumps({"crash_looping": dict.fromkeys(looping, 3)})
    return [ServerRow(name, 1, "1", NOW - timedelta(hours=1), NOW, "h", NOW, state=state)
            for name in ("a", "b")]


def hold(server: str) -> Hold:
    return Hold("pause", "idle", server, 1, "ops", "maintenance", NOW)


def overview(holds: list[Hold], looping: tuple[str, ...] = ()) -> Overview:
    """'idle' (period 60 s) last succeeded 10 minutes ago: stale for k = 3."""
    spec = DaemonSpec(name="idle", module="idle", period=60.0, timeout=180.0)
    views = server_views(servers(looping), heartbeat_interval=30)
    facts = {"idle": ScriptFacts(NOW - timedelta(hours=1), NOW - timedelta(minutes=10))}
    scripts = script_views({"idle": spec}, [], facts, [], views, NOW, 3.0, holds)
    return Overview(NOW, 3.0, views, scripts, [], holds=holds)


@pytest.mark.parametrize(("holds", "paused"), [
    ([hold("*")], True),  # fleet-wide
    ([hold("a"), hold("b")], True),  # on every live server
    ([hold("a")], False),  # b still runs it: it should have succeeded there
    ([], False),
])
def test_a_script_paused_everywhere_is_not_stale(holds: list[Hold], paused: bool) -> None:
    ov = overview(holds)
    (view,) = ov.scripts
    assert (view.paused, view.stale) == (paused, not paused)
    assert view.paused_on == tuple(sorted({h.server for h in holds}))
    code, text = check_text(ov)
    if paused:
        assert code == CHECK_OK, text
        assert text.startswith("OK: 0 stale, 0 late, 1 paused of 1 scripts")
        assert "paused: idle (" in text and "stale:" not in text
    else:
        assert code == CHECK_CRITICAL, text
        assert "stale: idle (no successful run anywhere for 10m, limit 3 x 60.0s)" in text


def test_scripts_list_and_script_page_show_paused_and_crash_looping_badges() -> None:
    ov = overview([hold("a")], looping=("idle",))
    (view,) = ov.scripts
    assert view.crash_looping_on == ("a", "b")
    listed = scripts_page(ov, "", 30)
    page = script_page(ScriptDetail(NOW, view, []), "idle", "", 30)
    for html in (listed, page):
        assert '<span class="badge off">PAUSED on a</span>' in html
        assert '<span class="badge stale">CRASH-LOOPING on a, b</span>' in html
    fleetwide = scripts_page(overview([hold("*")]), "", 30)
    assert '<span class="badge off">PAUSED</span>' in fleetwide
    assert "CRASH-LOOPING" not in fleetwide and "STALE" not in fleetwide
