"""``/metrics``: the fleet in the Prometheus text format, read from the database per scrape.

The history's families (runs by outcome, the duration and dispatch-delay histograms) come
from the run counters the masters keep as runs end (``daemon_run_count``,
pandaserver/db/stores/runcounts.py): one small read per scrape, whatever the history holds, and
counters that never go down, history pruned or web process restarted (they live in the
database, not in this process). Prometheus sees one series per script, server and outcome,
as before.

The history's families, most of the page's lines, are written straight from those sums
(``FleetCollector.text``), byte for byte what ``generate_latest`` makes of ``collect()``.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from pandaserver.config.secrets import redact
from pandaserver.db.stores import runcounts
from pandaserver.db.stores.runcounts import DELAY_BUCKETS, DURATION_BUCKETS
from pandaserver.db.stores.runrecords import FAILED, OK, SKIPPED, TIMEOUT
from pandaserver.web.fleetview import FleetReader, LocalMaster, Overview, local_master_views

DURATION_OUTCOMES = (OK, FAILED, TIMEOUT)
Key = tuple[str, ...]
Sums = dict[Key, list[float]]


def _count_groups(conn: Connection) -> list[tuple[Key, list[float]]]:
    """The counters as groups by (script, server, outcome), as ``fold`` takes them: per
    group its count, then the duration's sum (microseconds) and cumulative bucket counts,
    then the delay's count, sum (microseconds) and cumulative bucket counts."""
    return [(key, [float(v) for v in values]) for key, values in runcounts.read_counts(conn)]


def fold(groups: Iterable[tuple[Key, list[float]]]) -> dict[str, Sums]:
    """The families from the groups of ``_count_groups``: ``runs`` per (script, server,
    outcome) [count]; ``durations`` per script over ok, failed and timeout runs and
    ``delays`` per script over runs with a due time that are not skipped attempts, each
    [count, sum, cumulative count per bucket...]."""
    out: dict[str, Sums] = {"runs": {}, "durations": {}, "delays": {}}
    d = len(DURATION_BUCKETS)
    for key, values in groups:
        script, _, outcome = key
        count = values[0]
        out["runs"][key] = [count]
        if outcome in DURATION_OUTCOMES:
            _add(out["durations"], {(script,): [count, *values[1:2 + d]]})
        delays = values[2 + d:]
        if outcome != SKIPPED and delays[0] > 0:
            _add(out["delays"], {(script,): delays})
    return out


def _add(into: Sums, more: Sums) -> Sums:
    for key, values in more.items():
        have = into.setdefault(key, [0.0] * len(values))
        for i, v in enumerate(values):
            have[i] += v
    return into


class HistoryCounters:
    """The history's counters (``runs``, ``durations``, ``delays``: see ``fold``), read from
    ``daemon_run_count``: they only go up, and pruning the history leaves them alone."""

    def read(self, conn: Connection) -> dict[str, Sums]:
        sums = fold(_count_groups(conn))
        for family in ("durations", "delays"):  # microseconds, added exactly: seconds now
            for values in sums[family].values():
                values[1] /= 1_000_000
        return sums


def _histogram(name: str, doc: str, sums: Sums, buckets: Sequence[float]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["script"])
    for (script,), values in sorted(sums.items()):
        count, total, cumulative = values[0], values[1], values[2:]
        points = [(f"{b:g}", c) for b, c in zip(buckets, cumulative, strict=True)]
        family.add_metric([script], [*points, ("+Inf", count)], sum_value=total)
    return family


class FleetCollector(Collector):
    def __init__(self, reader: FleetReader) -> None:
        self.reader = reader
        self.counters = HistoryCounters()
        self.db_errors = 0
        self._lock = threading.Lock()

    def read(self) -> Scrape:
        """What one scrape shows: the fleet's overview and the history's counters."""
        overview: Overview | None = None
        sums: dict[str, Sums] = {}
        try:
            overview = self.reader.overview()
            with self.reader.engine.connect() as conn:
                sums = self.counters.read(conn)
        except SQLAlchemyError:
            with self._lock:
                self.db_errors += 1
        if overview is None or not sums:
            return Scrape(None, {}, self.db_errors, local_master_views(self.reader.state_dir))
        return Scrape(overview, sums, self.db_errors, overview.local)

    def collect(self) -> Iterator[Metric]:
        yield from _redacted(self.families(self.read()))

    def families(self, scrape: Scrape) -> Iterator[Metric]:
        yield from _head_metrics(scrape)
        if scrape.overview is None:
            return
        yield from _history_metrics(scrape.sums)
        yield from _fleet_metrics(scrape.overview)

    def text(self, scrape: Scrape | None = None) -> bytes:
        """The Prometheus text of ``scrape`` (read now by default): byte for byte what
        ``generate_latest`` makes of ``families(scrape)``, but the history's families (one
        sample per script and bucket, most of the page) are written straight from their sums
        instead of through one ``Sample`` per line (tests compare the two)."""
        scrape = scrape or self.read()
        parts = [generate_latest(_Families(_head_metrics(scrape)))]
        if scrape.overview is not None:
            parts.append(_history_text(scrape.sums).encode("utf-8"))
            parts.append(generate_latest(_Families(_fleet_metrics(scrape.overview))))
        return b"".join(parts)


@dataclass(frozen=True)
class Scrape:
    overview: Overview | None  # None: the database could not be read
    sums: dict[str, Sums]
    db_errors: int
    local: list[LocalMaster]


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return _redacted(self._families)


def _redacted(families: Iterable[Metric]) -> Iterator[Metric]:
    """The families with every label value redacted."""
    for family in families:
        family.samples = [sample._replace(labels={k: _clean(v) for k, v in sample.labels.items()})
                          for sample in family.samples]
        yield family


def _head_metrics(scrape: Scrape) -> Iterator[Metric]:
    up = GaugeMetricFamily("panda_daemon_database_up",
                           "1 when this scrape could read the shared database")
    up.add_metric([], 0.0 if scrape.overview is None else 1.0)
    yield up
    errors = CounterMetricFamily("panda_daemon_web_database_errors",
                                 "database errors met by the web application's reads")
    errors.add_metric([], float(scrape.db_errors))
    yield errors
    yield from _local_metrics(scrape.local)


def _go(value: float) -> str:
    """A sample's value as prometheus_client writes it."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=4096)
def _clean(value: str) -> str:
    """A label value as shown: redacted (cached: a scrape repeats the same few values)."""
    return redact(value)


def _label(value: str) -> str:
    value = _clean(value)
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _head(name: str, doc: str, kind: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _history_text(sums: dict[str, Sums]) -> str:
    """The text of ``_history_metrics(sums)``, written directly."""
    out = [_head(RUNS[0] + "_total", RUNS[1], "counter")]
    skips = [_head(CONTENTION[0] + "_total", CONTENTION[1], "counter")]
    for (script, server, outcome), values in sorted(sums["runs"].items()):
        labels = f'script="{_label(script)}",server="{_label(server)}"'
        value = _go(values[0])
        out.append(f'{RUNS[0]}_total{{outcome="{_label(outcome)}",{labels}}} {value}\n')
        if outcome == SKIPPED:
            skips.append(f"{CONTENTION[0]}_total{{{labels}}} {value}\n")
    out.extend(skips)
    for (name, doc), family, buckets in ((DURATIONS, "durations", DURATION_BUCKETS),
                                         (DELAYS, "delays", DELAY_BUCKETS)):
        out.append(_head(name, doc, "histogram"))
        les = [f"{b:g}" for b in buckets]
        for (script,), values in sorted(sums[family].items()):
            label = f'script="{_label(script)}"'
            out.extend(f'{name}_bucket{{le="{le}",{label}}} {_go(c)}\n'
                       for le, c in zip(les, values[2:], strict=True))
            count = _go(values[0])
            out.append(f'{name}_bucket{{le="+Inf",{label}}} {count}\n')
            out.append(f"{name}_count{{{label}}} {count}\n")
            out.append(f"{name}_sum{{{label}}} {_go(values[1])}\n")
    return "".join(out)


RUNS = ("panda_daemon_runs", "finished runs by script, server and outcome")
CONTENTION = ("panda_daemon_lease_contention",
              "old history rows of attempts skipped because another server held the lease (no"
              " longer written: see panda_daemon_lease_contended_total)")
DURATIONS = ("panda_daemon_run_duration_seconds", "duration of finished runs (ok, failed, timeout)")
DELAYS = ("panda_daemon_dispatch_delay_seconds",
          "start minus due time, for runs whose due time was recorded")


def _history_metrics(sums: dict[str, Sums]) -> Iterator[Metric]:
    runs = CounterMetricFamily(*RUNS, labels=["script", "server", "outcome"])
    skips = CounterMetricFamily(*CONTENTION, labels=["script", "server"])
    for key, values in sorted(sums["runs"].items()):
        runs.add_metric(list(key), values[0])
        if key[2] == SKIPPED:
            skips.add_metric([key[0], key[1]], values[0])
    yield runs
    yield skips
    yield _histogram(*DURATIONS, sums["durations"], DURATION_BUCKETS)
    yield _histogram(*DELAYS, sums["delays"], DELAY_BUCKETS)


def _gauges(name: str, doc: str, labels: list[str],
            values: Iterable[tuple[list[str], float | None]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        if value is not None and not math.isnan(value):
            family.add_metric(label_values, value)
    return family


def _fleet_metrics(ov: Overview) -> Iterator[Metric]:
    grants = CounterMetricFamily("panda_daemon_lease_grants",
                                 "lease generations: grants (and forced releases) of each sync"
                                 " script's lease, fleet-wide", labels=["script"])
    for lease in ov.leases:
        grants.add_metric([lease.name], float(lease.generation))
    yield grants
    contended = CounterMetricFamily("panda_daemon_lease_contended",
                                    "grant attempts each sync script's lease refused, fleet-wide"
                                    " (another server held it or had served the period)",
                                    labels=["script"])
    for lease in ov.leases:
        contended.add_metric([lease.name], float(lease.contended))
    yield contended
    yield _gauges("panda_daemon_lease_contended_by", "1 for the server of the latest refused"
                  " grant attempt of each sync script's lease", ["script", "server"],
                  (([lease.name, lease.contended_by], 1.0) for lease in ov.leases
                   if lease.contended_by is not None))
    yield _gauges("panda_daemon_lease_contended_age_seconds", "seconds since the latest refused"
                  " grant attempt of each sync script's lease (database clock)", ["script"],
                  (([lease.name], lease.contended_ago) for lease in ov.leases))
    yield _gauges("panda_daemon_lease_held", "1 while a server holds the script's lease",
                  ["script", "server"],
                  (([lease.name, lease.owner_server or ""], 1.0 if lease.held else 0.0)
                   for lease in ov.leases))
    s = ov.servers
    yield _gauges("panda_daemon_server_up", "1 while the master's heartbeat is fresh",
                  ["server"], (([v.server], float(v.alive)) for v in s))
    yield _gauges("panda_daemon_server_heartbeat_age_seconds", "seconds since the last heartbeat",
                  ["server"], (([v.server], v.heartbeat_age) for v in s))
    yield _gauges("panda_daemon_server_clock_offset_seconds",
                  "the server's wall clock minus the database clock", ["server"],
                  (([v.server], v.clock_offset) for v in s))
    yield _gauges("panda_daemon_server_config_mismatch",
                  "1 when the server's configuration hash differs from most live servers'",
                  ["server"], (([v.server], float(v.config_mismatch)) for v in s))
    yield _gauges("panda_daemon_server_info", "version and configuration hash of each master",
                  ["server", "version", "config_hash"],
                  (([v.server, v.version, v.config_hash], 1.0) for v in s))
    judged = [v for v in ov.scripts if v.configured]
    yield _gauges("panda_daemon_script_seconds_since_last_success",
                  "seconds since the end of the script's last successful run anywhere in the"
                  " fleet (absent: none in the history)", ["script"],
                  (([v.name], v.since_success) for v in ov.scripts))
    yield _gauges("panda_daemon_script_period_seconds", "the script's period (this server's"
                  " configuration; a cron script: the shortest interval between two firings)",
                  ["script"], (([v.name], v.period) for v in judged))
    yield _gauges("panda_daemon_script_next_firing_timestamp_seconds", "a cron script's next"
                  " due firing (UNIX time; sync: fleet-wide, by its lease), with its schedule"
                  " and zone", ["script", "cron", "timezone"],
                  (([v.name, v.cron, v.timezone or "UTC"], v.next_due.timestamp())
                   for v in judged if v.cron is not None and v.next_due is not None))
    yield _gauges("panda_daemon_script_stale", "1 when no successful run anywhere for"
                  " stale_factor x period (a cron script: stale_factor firings)", ["script"],
                  (([v.name], float(v.stale)) for v in judged))
    yield _gauges("panda_daemon_script_late", "1 when past due by more than max(300 s,"
                  " period/2) and not running", ["script"],
                  (([v.name], float(v.late)) for v in judged))
    yield _gauges("panda_daemon_stale_factor", "k: stale after k x period", [],
                  [([], ov.stale_factor)])
    yield _gauges("panda_daemon_server_draining", "1 while an operator drains the server"
                  " (panda-daemon drain)", ["server"],
                  (([v.server], float(v.draining)) for v in s if v.alive))
    yield _gauges("panda_daemon_script_paused", "1 while the script is paused (server '*':"
                  " fleet-wide)", ["script", "server"],
                  (([h.name, h.server], 1.0) for h in ov.paused))
    yield _gauges("panda_daemon_script_crash_looping", "1 while the script keeps killing its"
                  " worker or failing to import on that server", ["script", "server"],
                  (([name, server], 1.0) for name, where in sorted(ov.crash_looping.items())
                   for server in where))


def _local_metrics(local: list[LocalMaster]) -> Iterator[Metric]:
    live = [m for m in local if m.alive]
    yield _gauges("panda_daemon_workers_alive", "worker processes alive (masters on this host)",
                  ["server"], (([m.server], float(m.workers_alive)) for m in live))
    yield _gauges("panda_daemon_workers_configured", "n_proc (masters on this host)", ["server"],
                  (([m.server], float(m.n_proc) if m.n_proc is not None else None) for m in live))
    yield _gauges("panda_daemon_master_database_available",
                  "1 when the master (on this host) can use the database", ["server"],
                  (([m.server], None if m.database_available is None
                    else float(m.database_available)) for m in live))
    yield _gauges("panda_daemon_master_log_lines_dropped",
                  "log lines the master (on this host) and its workers dropped since the"
                  " master started because they could not be written (a full log disk)",
                  ["server"], (([m.server], None if m.log_dropped is None
                                else float(m.log_dropped)) for m in live))
    yield _gauges("panda_daemon_master_log_failing",
                  "1 while the master (on this host) or a worker cannot write log lines",
                  ["server"], (([m.server], float(m.log_failing is not None)) for m in live))
    refused = CounterMetricFamily("panda_daemon_master_lease_refused",
                                  "sync lease attempts refused on the master (on this host)"
                                  " since it started", labels=["server"])
    for m in live:
        if m.lease_refused is not None:
            refused.add_metric([m.server], float(m.lease_refused))
    yield refused
    yield _gauges("panda_daemon_master_pending_history_rows",
                  "history rows the master (on this host) keeps until the database is back",
                  ["server"], (([m.server], None if m.pending_history is None
                                else float(m.pending_history)) for m in live))


def make_registry(reader: FleetReader) -> tuple[CollectorRegistry, FleetCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(reader)
    registry.register(collector)
    return registry, collector
