"""A throwaway MariaDB (or MySQL) server for tests.

``MariaDbServer.start()`` runs ``mariadb-install-db`` into a fresh temporary directory
and starts ``mariadbd`` on a free TCP port of 127.0.0.1 (found by binding port 0), its
socket in the same directory, with durability off (the data is thrown away). MariaDB
would run as root only with ``--user=root``; as root everything runs as an
unprivileged user instead (``$PANDA_TEST_MYSQL_USER``, default ``mysql``, created by
Debian's package; created here when absent): ``mariadb-install-db`` through ``runuser``, the
server itself started by this process as that user (Popen's ``user``), never under
``runuser``: runuser passes a SIGTERM on and then sleeps 2 s before it SIGKILLs the server,
so a "clean" stop took 2 s and was no clean shutdown; and when it finds its child stopped
(a test freezing the server with SIGSTOP) it stops itself, and stays stopped after the
SIGCONT whenever it saw the child stopped first, so a later SIGTERM waited 30 s for
``STOP_DEADLINE``. Root logs in over TCP with a random
password, as production URLs carry one. ``stop()`` kills the server (SIGKILL: the data is
thrown away) and removes the directory; it is called whenever ``start()`` got
as far as starting the server, whatever failed after (tests/conftest.py).

Binaries: ``$PANDA_TEST_MYSQL_BIN`` (the directory holding ``mariadbd`` and
``mariadb-install-db``), else ``$PATH`` and ``/usr/sbin``, ``/usr/bin``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pymysql
from pg import _ensure_user, free_port, scratch_dir
from sqlalchemy import URL

START_DEADLINE = 60.0
STOP_DEADLINE = 30.0


class MySqlUnavailable(Exception):
    """MariaDB could not be started; the message says why."""


def _find(tool: str) -> str:
    explicit = os.environ.get("PANDA_TEST_MYSQL_BIN")
    if explicit:
        candidate = Path(explicit) / tool
        if candidate.is_file():
            return str(candidate)
        raise MySqlUnavailable(f"{candidate} not found (PANDA_TEST_MYSQL_BIN)")
    found = shutil.which(tool)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/bin"):
        candidate = Path(directory) / tool
        if candidate.is_file():
            return str(candidate)
    raise MySqlUnavailable(f"{tool} not found (install mariadb-server, or set"
                           " PANDA_TEST_MYSQL_BIN)")


class MariaDbServer:
    def __init__(self) -> None:
        self.mariadbd = _find("mariadbd")
        self.install_db = _find("mariadb-install-db")
        self.port = 0
        self.password = "pw-" + secrets.token_hex(8)
        self.base: Path | None = None
        self.user: str | None = None
        self._run_as: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._user_args: list[str] = []
        self.version = ""

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def tmpdir(self) -> Path:
        assert self.base is not None
        return self.base / "tmp"

    @property
    def socket(self) -> Path:
        assert self.base is not None
        return self.base / "mysqld.sock"

    @property
    def logfile(self) -> Path:
        assert self.base is not None
        return self.base / "mariadb.log"

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no server log)"

    def start(self) -> None:
        self.base = scratch_dir("panda-mariadb-")
        self.base.chmod(0o755)
        user_args: list[str] = []
        if os.geteuid() == 0:
            user = _ensure_user(os.environ.get("PANDA_TEST_MYSQL_USER", "mysql"))
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.user = user.pw_name
            self._run_as = ["runuser", "-u", user.pw_name, "--"]
            user_args = [f"--user={user.pw_name}"]
        # temporary tables in a directory of this server's own: in the shared /tmp, servers
        # bootstrapping side by side (xdist workers) lose each other's ("Could not remove
        # temporary table '/tmp/#sql-temptable-...'", then the bootstrap aborts)
        self.tmpdir.mkdir()
        if self.user is not None:
            os.chown(self.tmpdir, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        # --no-defaults: neither /etc/mysql/my.cnf nor ~/.my.cnf may change the server
        init = subprocess.run(
            [*self._run_as, self.install_db, "--no-defaults", f"--datadir={self.datadir}",
             *user_args, "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve", f"--tmpdir={self.tmpdir}"],
            capture_output=True, text=True, timeout=START_DEADLINE, check=False,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if init.returncode != 0:
            raise MySqlUnavailable(
                f"mariadb-install-db failed ({init.returncode}): "
                f"{(init.stderr or init.stdout).strip()[-2000:]}")
        self.port = free_port()
        self._user_args = user_args
        self._launch()
        self._wait_ready()

    def _launch(self) -> None:
        """Start ``mariadbd`` on this server's data directory and port (appending to its log)."""
        assert self.base is not None
        log = open(self.logfile, "ab")  # the server writes it until stop()
        try:
            # as root: the server is this process's own child, switched to the user by Popen,
            # not a child of runuser, which would stand between it and the signals of a stop
            # or a freeze (see the module docstring)
            self._proc = subprocess.Popen(
                [self.mariadbd, "--no-defaults", f"--datadir={self.datadir}",
                 f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                 f"--tmpdir={self.tmpdir}",
                 f"--pid-file={self.base / 'mariadbd.pid'}", *self._user_args,
                 "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0",
                 "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M",
                 "--innodb-doublewrite=0", "--skip-log-bin", "--max-connections=300",
                 "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self._as_user(),
            )
        finally:
            log.close()

    def _as_user(self) -> dict[str, Any]:
        """Popen's arguments that start the server as ``self.user`` (when root), with that
        user's group and no supplementary groups."""
        if self.user is None:
            return {}
        account = pwd.getpwnam(self.user)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def pids(self) -> list[int]:
        """The server's processes (``mariadbd``): what a test freezes with SIGSTOP."""
        assert self._proc is not None
        root = psutil.Process(self._proc.pid)
        return [root.pid, *(p.pid for p in root.children(recursive=True))]

    def restart(self, down: float = 0.0) -> None:
        """A clean shutdown (SIGTERM: every connection is cut), ``down`` seconds with no
        server, then the same server again on the same port and data; returns once it
        accepts connections."""
        self._shutdown()
        time.sleep(down)  # the outage itself
        self._launch()
        self._wait_ready(root_password=self.password)

    def _wait_ready(self, root_password: str | None = None) -> None:
        """Until root connects through the socket (and then gets a TCP password)."""
        assert self._proc is not None
        deadline = time.monotonic() + START_DEADLINE
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MySqlUnavailable(
                    f"mariadbd exited with {self._proc.returncode}\n{self._log_tail()}")
            try:
                conn = pymysql.connect(unix_socket=str(self.socket), user="root",
                                       password=root_password or "", connect_timeout=2)
            except pymysql.err.MySQLError as exc:
                last = exc
                time.sleep(0.05)
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s",
                                (self.password,))
                    cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
                    cur.execute("ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY %s",
                                (self.password,))
                    cur.execute("GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
                    cur.execute("SELECT VERSION()")
                    row = cur.fetchone()
                    self.version = str(row[0]) if row else ""
            finally:
                conn.close()
            return
        raise MySqlUnavailable(f"MariaDB did not accept connections within {START_DEADLINE:.0f}"
                               f" s: {last}\n{self._log_tail()}")

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                               password=self.password, database=database, connect_timeout=5,
                               autocommit=True)

    def url(self, database: str) -> URL:
        return URL.create("mysql+pymysql", username="root", password=self.password,
                          host="127.0.0.1", port=self.port, database=database)

    def _admin(self, sql: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str) -> URL:
        self._admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return self.url(name)

    def seal_template(self, name: str) -> None:
        """Check that ``copy_template`` can copy all of ``name``: base tables only (MariaDB
        has no database templates; the copy is made table by table)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT CONCAT(table_type, ' ', table_name) FROM information_schema.tables"
                    " WHERE table_schema = %s AND table_type <> 'BASE TABLE' UNION ALL"
                    " SELECT CONCAT('TRIGGER ', trigger_name) FROM information_schema.triggers"
                    " WHERE trigger_schema = %s UNION ALL"
                    " SELECT CONCAT(routine_type, ' ', routine_name)"
                    " FROM information_schema.routines WHERE routine_schema = %s",
                    (name, name, name))
                others = [str(row[0]) for row in cur.fetchall()]
        finally:
            conn.close()
        if others:
            raise MySqlUnavailable(f"the template database {name} holds what copy_template"
                                   f" does not copy: {', '.join(others)}")

    def copy_template(self, template: str, name: str) -> None:
        """Fill the fresh, empty database ``name`` with a copy of ``template``: each table
        created by the statement that ``SHOW CREATE TABLE`` gives (keys, indexes, foreign
        keys and options included), then its rows copied."""
        conn = self.connect(name)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT table_name FROM information_schema.tables"
                            " WHERE table_schema = %s AND table_type = 'BASE TABLE'",
                            (template,))
                tables = sorted(str(row[0]) for row in cur.fetchall())
                cur.execute("SET SESSION foreign_key_checks = 0")  # tables in any order
                for table in tables:
                    cur.execute(f"SHOW CREATE TABLE `{template}`.`{table}`")
                    row = cur.fetchone()
                    assert row is not None, table
                    cur.execute(str(row[1]))
                    cur.execute(f"INSERT INTO `{table}` SELECT * FROM `{template}`.`{table}`")
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS `{name}`")

    def _shutdown(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # mariadbd shuts down cleanly (a tenth of a second for a test's data)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_DEADLINE)
        self._proc = None

    def stop(self) -> None:
        """The end: SIGKILL, as ``pg_ctl stop -m immediate`` ends PostgreSQL (pg.py): the
        data is thrown away, so no clean shutdown is worth waiting for; ``restart`` keeps
        the clean one."""
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # mariadbd leads its own session
                proc.wait(timeout=STOP_DEADLINE)
            self._proc = None
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None
