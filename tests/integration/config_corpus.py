"""The rows of the broken-config corpus (tests/integration/test_config_corpus.py): one
config each, the exit status check-config, run, start and reload must end with, and a
fragment of their message. ``SECRETS`` lists every secret planted in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Every secret planted below; none may appear in any output. "ss99@" is the tail SQLAlchemy
# takes for a host when a password holds "@".
SECRETS = ("S3cret/x", "Hunter2Secret", "pw12345", "pa@ss99", "ss99@", "hunter22pw",
           "tok_abcdef123", "SrvPass77", "JsonPw888", "ArgPw999", "PgPw4242", "FIXMEpw77")

BASE_SCRIPTS = '{"ok": {"module": "record", "period": 60}}'
LOCAL_DB = "sqlite:///{tmp}/db/panda.sqlite"
REAL_TEMPLATE_SERVER = """\
logdir = {tmp}/logs
lockfile_getJobs = %(logdir)s/getJobs.lock
dbhost = ADCR_PANDA
dbuser = ATLAS_PANDA_WRITER
dbpasswd = FIXMEpw77
dbname = PandaDB
nDBConnection = 2
usedbtimeout = True
#backend = mysql
emailPass = Hunter2Secret
token_authType = None
"""
REAL_TEMPLATE_DAEMON: dict[str, str | None] = {
    "enable": "False", "uname": "atlpan", "gname": "zp",
    "package": "pandaserver.daemons.scripts", "n_proc": "1",
}
REAL_TEMPLATE_SCRIPTS = """{
    "add": {"period": 240},
    "copyArchive": {"period": 3600, "sync": true},
    "pilotStreaming": {"enable": false, "period": 300},
    "configurator": {"module": "configurator", "period": 200},
    "serverSchedconfigJson": {"module": "configurator", "arguments": ["--json_dump"], "period": 200}
  }"""


@dataclass(frozen=True)
class Case:
    id: str
    daemon: dict[str, str | None] = field(default_factory=dict)  # None removes a base key
    scripts: str | None = BASE_SCRIPTS  # the config JSON; None leaves the key out
    server: str = ""
    check: int = 0
    run: int | str = "starts"  # an exit status, or "starts" (validation passed)
    fragment: str = ""  # expected in check-config's output and in run's
    start: int | None = None  # the exit status of start, for rows start refuses
    reload: int | None = None  # the exit status of reload (3 when valid: no master runs)
    env: dict[str, str] = field(default_factory=dict)
    root: bool = False  # validate as root without PANDA_NO_ROOT (start switches users)
    raw: str | None = None  # the whole file, instead of one built from the fields above
    config_arg: str | None = "panda_server.cfg"  # -c; None: search as the PanDA server does
    files: dict[str, str] = field(default_factory=dict)  # more files under the temp dir
    check_args: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # scripts run leaves out of the schedule
    run_fragment: str | None = None  # when run says it differently


def section(daemon: dict[str, str | None], scripts: str | None, server: str) -> str:
    keys: dict[str, str | None] = {"enable": "True", "package": "testscripts", "n_proc": "1",
                                   **daemon}
    lines = []
    if server:
        lines += ["[server]", server.rstrip("\n"), ""]
    lines.append("[daemon]")
    lines += [f"{key} = {value}" for key, value in keys.items() if value is not None]
    if scripts is not None:
        lines.append("config = " + scripts.replace("\n", "\n    "))
    return "\n".join(lines) + "\n"


CASES = [
    # ----- [daemon] enable: only True and False, as PanDA's parser --------------------------
    Case("enable-Ture", {"enable": "Ture"}, check=2, run=2, start=2, reload=2,
         fragment="key 'enable': must be True or False, got: 'Ture'"),
    Case("enable-maybe", {"enable": "maybe"}, check=2, run=2, start=2,
         fragment="must be True or False, got: 'maybe'"),
    Case("enable-lowercase-true", {"enable": "true"}, check=2, run=2, start=2,
         fragment="got: 'true' (did you mean True?); PanDA's config parser"),
    Case("enable-lowercase-false", {"enable": "false"}, check=2, run=2, start=2,
         fragment="(did you mean False?)"),
    Case("enable-unset-variable", {"enable": "$NO_SUCH_VARIABLE"}, check=2, run=2,
         fragment="key 'enable': refers to environment variable $NO_SUCH_VARIABLE"),
    Case("enable-False-is-valid", {"enable": "False"}, check=0, run=0,
         fragment="the daemon is disabled", start=0),
    # ----- uname / gname -------------------------------------------------------------------
    Case("uname-unknown-not-root", {"uname": "no_such_user_x"}, check=0, reload=3,
         fragment="key 'uname': user 'no_such_user_x' does not exist on this host"),
    Case("gname-unknown-not-root", {"gname": "no_such_group_x"}, check=0,
         fragment="key 'gname': group 'no_such_group_x' does not exist on this host"),
    Case("uname-unknown-as-root", {"uname": "no_such_user_x"}, root=True, check=6, start=6,
         reload=6, fragment="user 'no_such_user_x' (uname in [daemon]"),
    Case("gname-unknown-as-root", {"uname": "nobody", "gname": "no_such_group_x"}, root=True,
         check=6, start=6, fragment="group 'no_such_group_x' (gname in [daemon]"),
    Case("uname-unset-as-root", {}, root=True, check=6, start=6,
         fragment="started as root, but uname is not set"),
    Case("uname-root-as-root", {"uname": "root"}, root=True, check=6, start=6,
         fragment="uname 'root' in [daemon]"),
    # ----- n_proc, n_dbconn ----------------------------------------------------------------
    Case("n_proc-zero", {"n_proc": "0"}, check=2, run=2, start=2, reload=2,
         fragment="key 'n_proc': must be at least 1, got: 0"),
    Case("n_proc-10000", {"n_proc": "10000"}, check=2, run=2,
         fragment="key 'n_proc': must be at most 256, got: 10000"),
    Case("n_proc-word", {"n_proc": "four"}, check=2, run=2,
         fragment="key 'n_proc': must be a whole number from 1 to 256, got: 'four'"),
    Case("n_proc-fraction", {"n_proc": "2.5"}, check=2, run=2, fragment="got: '2.5'"),
    Case("n_dbconn-zero", {"n_dbconn": "0"}, check=2, run=2,
         fragment="key 'n_dbconn': must be at least 1"),
    Case("n_dbconn-huge", {"n_dbconn": "5000"}, check=2, run=2,
         fragment="key 'n_dbconn': must be at most 100"),
    # ----- proc_lifetime, stop_grace -------------------------------------------------------
    Case("proc_lifetime-0.001", {"proc_lifetime": "0.001"}, check=2, run=2, start=2,
         fragment="key 'proc_lifetime': must be at least 1 s, got: '0.001'"),
    Case("proc_lifetime-negative", {"proc_lifetime": "-1"}, check=2, run=2,
         fragment="key 'proc_lifetime': must be positive"),
    Case("proc_lifetime-nan", {"proc_lifetime": "nan"}, check=2, run=2,
         fragment="must be a finite number of seconds"),
    Case("proc_lifetime-huge", {"proc_lifetime": "1e9"}, check=2, run=2,
         fragment="must be at most 365 days"),
    Case("proc_lifetime-short-warns", {"proc_lifetime": "10"}, check=0,
         fragment="workers are replaced every 10 s"),
    Case("stop_grace-negative", {"stop_grace": "-1"}, check=2, run=2,
         fragment="key 'stop_grace': must be zero or positive"),
    Case("stop_grace-huge", {"stop_grace": "1e6"}, check=2, run=2,
         fragment="key 'stop_grace': must be at most 3600 s"),
    # ----- heartbeat_interval, history_retention_days/_rows, lease_ttl, lease_grace -----------
    Case("heartbeat-zero", {"heartbeat_interval": "0"}, check=2, run=2,
         fragment="key 'heartbeat_interval': must be positive"),
    Case("heartbeat-huge", {"heartbeat_interval": "1e5"}, check=2, run=2,
         fragment="key 'heartbeat_interval': must be at most 3600 s"),
    Case("command_interval-zero", {"command_interval": "0"}, check=2, run=2,
         fragment="key 'command_interval': must be positive"),
    Case("command_interval-huge", {"command_interval": "1e4"}, check=2, run=2,
         fragment="key 'command_interval': must be at most 300 s"),
    Case("crash_backoff_max-tiny", {"crash_backoff_max": "0.5"}, check=2, run=2,
         fragment="key 'crash_backoff_max': must be at least 1 s"),
    Case("retention-half-day", {"history_retention_days": "0.5"}, check=2, run=2,
         fragment="key 'history_retention_days': must be at least 1 days"),
    Case("retention-huge", {"history_retention_days": "1e7"}, check=2, run=2,
         fragment="must be at most 36500 days"),
    Case("retention-rows-too-few", {"history_retention_rows": "10"}, check=2, run=2,
         fragment="key 'history_retention_rows': must be 0 (no bound) or 100 to 100000000"
                  " rows per script, got: 10"),
    Case("retention-rows-not-a-number", {"history_retention_rows": "1e6"}, check=2, run=2,
         fragment="key 'history_retention_rows': must be a whole number of rows per script"),
    Case("retention-rows-zero-no-bound", {"history_retention_rows": "0"}, check=0),
    Case("lease_ttl-5", {"lease_ttl": "5"}, check=2, run=2, start=2, reload=2,
         fragment="key 'lease_ttl': must be between 15 and 3600 seconds, got: '5'"),
    Case("lease_ttl-7200", {"lease_ttl": "7200"}, check=2, run=2,
         fragment="key 'lease_ttl': must be between 15 and 3600 seconds"),
    Case("lease_grace-unused-warns", {"lease_grace": "60"}, check=0,
         fragment="key 'lease_grace': is no longer used"),
    Case("lease_grace-negative", {"lease_grace": "-5"}, check=2, run=2,
         fragment="key 'lease_grace': must be zero or positive"),
    # ----- package -------------------------------------------------------------------------
    Case("package-missing", {"package": None}, check=2, run=2, start=2,
         fragment="key 'package': is required"),
    Case("package-empty", {"package": ""}, check=2, run=2, fragment="must not be empty"),
    Case("package-not-a-name", {"package": "my-scripts"}, check=2, run=2,
         fragment="must be a dotted Python package name"),
    Case("package-does-not-import", {"package": "no_such_package_x"}, check=2, run=2,
         start=2, reload=2, fragment="package 'no_such_package_x' does not import"),
    Case("package-raises-at-import", {"package": "badpkg"}, check=2, run=2, reload=2,
         fragment="ImportError: badpkg is broken on purpose"),
    # ----- config: the whole value ---------------------------------------------------------
    Case("config-missing", scripts=None, check=2, run=2, start=2,
         fragment="key 'config': is missing: no scripts will run"),
    Case("config-empty", scripts="", check=2, run=2, fragment="is empty: no scripts will run"),
    Case("config-empty-object", scripts="{}", check=2, run=2, start=2, reload=2,
         fragment="key 'config': is an empty object ({}): no scripts will run"),
    Case("loop-timeout-not-above-period",
         scripts='{"lp": {"module": "looper", "period": 30, "loop": true, "timeout": 10,'
                 ' "arguments": [3]}}', check=0,
         fragment="script 'lp' key 'timeout': timeout 10 s is not longer than the period 30 s"
                  " of this loop script"),
    Case("config-invalid-json", scripts='{"ok": {"module": "record", "period": 60,}}',
         check=2, run=2, reload=2, fragment="invalid JSON at line 1"),
    Case("config-not-an-object", scripts="[1, 2]", check=2, run=2,
         fragment="must be a JSON object mapping script names"),
    Case("config-duplicate-script", scripts='{"a": {"period": 1}, "a": {"period": 2}}',
         check=2, run=2, fragment="names script 'a' twice"),
    # ----- per script: the entry is dropped, the others run ---------------------------------
    Case("period-1e-9", scripts='{"ok": {"module": "record", "period": 60},'
                               ' "fast": {"module": "record", "period": 1e-9}}',
         check=2, fragment="script 'fast' key 'period': must be between 0.1 s and 365 days"),
    Case("sync-period-1e12", scripts='{"ok": {"module": "record", "period": 60},'
                                     ' "far": {"module": "record", "period": 1e12,'
                                     ' "sync": true}}',
         daemon={"db_url": LOCAL_DB}, check=2,
         fragment="script 'far' key 'period': must be between 0.1 s and 365 days"
                  " (31536000 s), got: 1000000000000.0"),
    Case("timeout-1e-9", scripts='{"ok": {"module": "record", "period": 60,'
                                 ' "timeout": 1e-9}}', check=2, run=2,
         fragment="key 'timeout': must be between 0.1 s and 366 days"),
    Case("timeout-huge", scripts='{"ok": {"module": "record", "period": 60, "timeout": 1e12}}',
         check=2, run=2, fragment="key 'timeout': must be between"),
    Case("period-string", scripts='{"ok": {"module": "record", "period": "60"}}', check=2,
         run=2, fragment='key \'period\': must be a number of seconds, got a string: "60"'),
    Case("cron-timezone-shown", scripts='{"ok": {"module": "record", "cron": "0 2 * * *",'
                                        ' "timezone": "Europe/Zurich"}}',
         fragment="cron 0 2 * * * (Europe/Zurich)", run_fragment=""),
    Case("cron-default-utc-shown", scripts='{"ok": {"module": "record", "cron": "@daily"}}',
         fragment="cron @daily (UTC)", run_fragment=""),
    Case("cron-and-period", scripts='{"ok": {"module": "record", "period": 60,'
                                    ' "cron": "0 2 * * *"}, "b": {"period": 5}}',
         check=2, fragment="script 'ok' key 'cron': and period are both set"),
    Case("cron-four-fields", scripts='{"ok": {"module": "record", "cron": "0 2 * *"},'
                                     ' "b": {"period": 5}}',
         check=2, fragment="script 'ok' key 'cron': must have five fields"),
    Case("timezone-unknown", scripts='{"ok": {"module": "record", "cron": "0 2 * * *",'
                                     ' "timezone": "Europe/Zurch"}, "b": {"period": 5}}',
         check=2, fragment="script 'ok' key 'timezone': unknown time zone 'Europe/Zurch'"),
    Case("period-missing", scripts='{"ok": {"module": "record"}, "b": {"period": 5}}',
         check=2, fragment="script 'ok' key 'period': is required"),
    Case("period-negative", scripts='{"ok": {"module": "record", "period": -5},'
                                    ' "b": {"module": "record", "period": 5}}',
         check=2, fragment="must be positive, got: -5"),
    Case("enable-number", scripts='{"ok": {"module": "record", "period": 60, "enable": 0},'
                                  ' "b": {"module": "record", "period": 5}}',
         check=2, fragment="key 'enable': must be true or false, got a number: 0"),
    Case("sync-string", scripts='{"ok": {"module": "record", "period": 60, "sync": "yes"},'
                                ' "b": {"module": "record", "period": 5}}',
         check=2, fragment='key \'sync\': must be true or false, got a string: "yes"'),
    Case("loop-number", scripts='{"ok": {"module": "record", "period": 60, "loop": 1},'
                                ' "b": {"module": "record", "period": 5}}',
         check=2, fragment="key 'loop': must be true or false"),
    Case("module-not-a-name", scripts='{"ok": {"module": "rec-ord", "period": 60},'
                                      ' "b": {"module": "record", "period": 5}}',
         check=2, fragment="key 'module': must be a Python module name"),
    Case("arguments-string", scripts='{"ok": {"module": "record", "period": 60,'
                                     ' "arguments": "x"}, "b": {"module": "record",'
                                     ' "period": 5}}',
         check=2, fragment="key 'arguments': must be a list of strings or numbers"),
    Case("arguments-hold-a-url-password",
         scripts='{"ok": {"module": "record", "period": 60,'
                 ' "arguments": ["postgresql://u:ArgPw999@h/db", "--password=ArgPw999"]}}',
         check=0, fragment="postgresql://u:***@h/db --password=***", run_fragment=""),
    Case("arguments-repeat-the-server-password",
         scripts='{"ok": {"module": "record", "period": 60, "arguments": ["SrvPass77"]}}',
         server="backend = sqlite\ndbname = {tmp}/db/x.sqlite\ndbpasswd = SrvPass77\n",
         check=0, fragment="record  60      180      false  false  ***", run_fragment=""),
    Case("script-key-typo", scripts='{"ok": {"module": "record", "period": 60, "perod": 5},'
                                    ' "b": {"module": "record", "period": 5}}',
         check=2, fragment='key \'perod\': unknown key (value 5) (did you mean "period"?)'),
    Case("script-key-named-like-a-secret",
         scripts='{"ok": {"module": "record", "period": 60, "db_password": "pw12345"},'
                 ' "b": {"module": "record", "period": 5}}',
         check=2, fragment="key 'db_password': unknown key (value hidden: its name suggests"),
    Case("script-entry-not-an-object", scripts='{"ok": 60, "b": {"module": "record",'
                                               ' "period": 5}}',
         check=2, fragment="entry must be a JSON object of settings, got a number: 60"),
    Case("script-name-too-long", scripts='{"' + "x" * 200 + '": {"module": "record",'
                                         ' "period": 5}, "b": {"module": "record",'
                                         ' "period": 5}}',
         check=2, fragment="script name must have at most 128 characters"),
    Case("module-does-not-import", scripts='{"ok": {"module": "record", "period": 60},'
                                           ' "gone": {"module": "no_such_module",'
                                           ' "period": 60}}',
         check=2, fragment="script 'gone': cannot import testscripts.no_such_module"),
    Case("module-raises-at-import", scripts='{"ok": {"module": "record", "period": 60},'
                                            ' "broken": {"module": "broken_import",'
                                            ' "period": 60}}',
         check=2, fragment="ImportError: this module is broken on purpose"),
    Case("main-signature", scripts='{"ok": {"module": "record", "period": 60},'
                                   ' "sig": {"module": "badsig", "period": 60}}',
         check=2, dropped=("sig",),
         fragment="script 'sig': main(a: 'Any', b: 'Any') -> 'None' cannot be called the way"
                  " the daemon calls it"),
    Case("module-prints-at-import", scripts='{"ok": {"module": "chatty_import",'
                                            ' "period": 60}}', check=0),
    # ----- [daemon] unknown keys: reported, never echoed when secret --------------------------
    Case("db_url-typo-with-password", {"db_ulr": "postgresql://u:S3cret/x@h/db"}, check=2,
         fragment="key 'db_ulr': unknown key (value 'postgresql://u:***@h/db' (secrets"
                  ' hidden)) (did you mean "db_url"?)'),
    Case("unknown-key-db_pwd", {"db_pwd": "hunter22pw"}, check=2,
         fragment="key 'db_pwd': unknown key (value hidden: its name suggests a secret)"),
    Case("unknown-key-api_token", {"api_token": "tok_abcdef123"}, check=2,
         fragment="key 'api_token': unknown key (value hidden"),
    # ----- db_url --------------------------------------------------------------------------
    Case("db_url-not-a-url", {"db_url": "not a url"}, check=2, run=2, start=2, reload=2,
         fragment="key 'db_url' is not a valid SQLAlchemy URL"),
    Case("db_url-postgres-scheme", {"db_url": "postgres://u:PgPw4242@h/db"}, check=2, run=2,
         fragment="'postgres' is not a database SQLAlchemy knows (did you mean"
                  ' "postgresql+psycopg2"?)'),
    Case("db_url-at-in-password", {"db_url": "postgresql+psycopg2://u:pa@ss99@h/db"}, check=2,
         run=2, reload=2, fragment="write an '@' inside the user name or password as %40"),
    Case("db_url-default-driver-missing", {"db_url": "postgresql://u:PgPw4242@h/db"}, check=2,
         run=2, fragment="the driver 'psycopg' is not installed"),
    Case("db_url-mysql-default-driver", {"db_url": "mysql://u:PgPw4242@h/db"}, check=2, run=2,
         fragment="pymysql is installed: write the URL as mysql+pymysql://"),
    Case("db_url-oracle", {"db_url": "oracle+oracledb://u:PgPw4242@h/db"}, check=2, run=2,
         fragment="backend 'oracle' is not supported by panda-daemon's own tables"),
    Case("db_url-mariadb-scheme", {"db_url": "mariadb+pymysql://u:PgPw4242@h/db"}, check=2,
         run=2, fragment="backend 'mariadb' is not supported"),
    Case("db_url-bad-port", {"db_url": "postgresql+psycopg2://u:PgPw4242@h:abc/db"}, check=2,
         run=2, fragment="key 'db_url' is not a valid SQLAlchemy URL"),
    Case("db_url-unset-variable", {"db_url": "${NO_SUCH_DB_URL}"}, check=2, run=2,
         fragment="refers to environment variable $NO_SUCH_DB_URL"),
    Case("db_url-unreachable-connect", {"db_url": "postgresql+psycopg2://u:PgPw4242@"
                                                  "127.0.0.1:1/db"},
         check=9, check_args=("--connect",), fragment="cannot connect",
         run_fragment=""),
    Case("sync-scripts-on-local-sqlite", {"db_url": LOCAL_DB},
         scripts='{"ok": {"module": "record", "period": 60, "sync": true}}', check=0,
         fragment="sync scripts (ok) are exclusive on this host only"),
    Case("sync-scripts-on-default-sqlite",
         scripts='{"ok": {"module": "record", "period": 60, "sync": true}}', check=0,
         fragment="no [daemon] db_url and no [server] backend or dbhost are set"),
    # ----- [server] database keys ----------------------------------------------------------
    Case("real-template-enabled", {**REAL_TEMPLATE_DAEMON, "enable": "True"},
         scripts=REAL_TEMPLATE_SCRIPTS, server=REAL_TEMPLATE_SERVER, check=2, run=2,
         start=2, fragment="[server] key 'dbhost': is set and [server] backend is not"),
    Case("real-template-as-shipped", REAL_TEMPLATE_DAEMON, scripts=REAL_TEMPLATE_SCRIPTS,
         server=REAL_TEMPLATE_SERVER, check=2, run=0, start=0,
         fragment="the daemon is disabled"),
    Case("server-postgres-valid", {}, server="backend = postgres\ndbhost = 127.0.0.1\n"
                                             "dbport = 1\ndbuser = panda\n"
                                             "dbpasswd = SrvPass77\ndbname = panda\n",
         check=0, fragment="database: postgresql+psycopg2://panda:***@127.0.0.1:1/panda",
         run_fragment=""),
    Case("server-dbport-word", {}, server="backend = postgres\ndbhost = h\ndbport = abc\n"
                                          "dbpasswd = SrvPass77\n",
         check=2, run=2, fragment="key 'dbport' must be a whole number, got: 'abc'"),
    Case("server-sqlite-no-dbname", {}, server="backend = sqlite\n", check=2, run=2,
         fragment="backend sqlite needs dbname"),
    Case("server-backend-oracle", {}, server="backend = oracle\ndbhost = h\n", check=2, run=2,
         fragment="backend 'oracle' is not supported"),
    Case("server-dbpasswd-unset-variable", {}, server="backend = postgres\ndbhost = h\n"
                                                      "dbpasswd = $NO_SUCH_PW\n",
         check=2, run=2, fragment="key 'dbpasswd' refers to environment variable $NO_SUCH_PW"),
    # ----- the file itself, and where it is found -----------------------------------------
    Case("config-arg-is-a-directory", config_arg=".", check=2, run=2,
         files={"panda_server.cfg": section({}, BASE_SCRIPTS, "")},
         fragment="is a directory, not a configuration file; did you mean"),
    Case("config-file-missing", config_arg="nope.cfg", check=2, run=2,
         fragment="configuration file not found"),
    Case("no-daemon-section", raw="[server]\nlogdir = /tmp\n", check=2, run=2,
         fragment="has no [daemon] section"),
    Case("not-an-ini-file", raw="enable = True\n", check=2, run=2, fragment="cannot parse"),
    Case("key-twice-in-one-file", raw="[daemon]\nenable = True\nenable = True\n", check=2,
         run=2, fragment="cannot parse"),
    Case("json-override-bad-n_proc", config_arg=None, env={"PANDA_HOME": "{tmp}/ph"},
         files={"ph/etc/panda/panda_server.cfg": section({}, BASE_SCRIPTS, ""),
                "ph/etc/config_json/panda_server_config.json":
                    '{"daemon": {"n_proc": 0, "db_pwd": "JsonPw888"}}'},
         check=2, run=2,
         fragment="panda_server_config.json [daemon] key 'n_proc': must be at least 1"),
    Case("json-override-invalid", config_arg=None, env={"PANDA_HOME": "{tmp}/ph"},
         files={"ph/etc/panda/panda_server.cfg": section({}, BASE_SCRIPTS, ""),
                "ph/etc/config_json/panda_server_config.json": '{"daemon": {'},
         check=2, run=2, fragment="panda_server_config.json: invalid JSON at line 1"),
    Case("home-and-panda-home-merged", config_arg=None, env={"PANDA_HOME": "{tmp}/ph"},
         files={"home/etc/panda/panda_server.cfg": section({"n_proc": "0"}, BASE_SCRIPTS, ""),
                "ph/etc/panda/panda_server.cfg": "[daemon]\nn_proc = 3\n"},
         check=0, fragment="n_proc: 3", run_fragment=""),
    Case("json-override-enables", config_arg=None, env={"PANDA_HOME": "{tmp}/ph"},
         files={"ph/etc/panda/panda_server.cfg": section({"enable": "False"}, BASE_SCRIPTS,
                                                          ""),
                "ph/etc/config_json/panda_server_config.json": '{"daemon": {"enable": true}}'},
         check=0, fragment="JSON override:", run_fragment=""),
]
