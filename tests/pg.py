"""A throwaway PostgreSQL cluster for tests.

``PgCluster.start()`` runs initdb and ``pg_ctl start`` in a fresh temporary
directory: a free TCP port on 127.0.0.1 (found by binding port 0), the unix socket in
the same directory, ``fsync=off``. PostgreSQL refuses to run as root, so as root
everything runs as an unprivileged user (``$PANDA_TEST_PG_USER``, default
``postgres``; created when absent, for fresh CI machines) through ``runuser``; as
any other user it runs as that user. TCP logins need a password (scram-sha-256), so
the URLs carry one, as production URLs do. ``stop()`` is ``pg_ctl stop -m
immediate`` (the postmaster is SIGKILLed if that fails) and removes the directory;
it is called whenever ``start()`` got as far as starting the server, whatever failed after.
The directory is made under ``$PANDA_TEST_SCRATCH`` when set (the session's scratch
directory, which the test watchdog removes, see tests/guard.py).

Binaries: ``$PANDA_TEST_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``,
else ``pg_config --bindir``, else ``$PATH``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2
from sqlalchemy import URL

START_DEADLINE = 60.0
SCRATCH_VAR = "PANDA_TEST_SCRATCH"


def scratch_dir(prefix: str) -> Path:
    """A fresh directory for a server, in the session's scratch directory when there is one."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get(SCRATCH_VAR) or None))


class PgUnavailable(Exception):
    """PostgreSQL could not be started; the message says why."""


def find_bindir() -> Path:
    explicit = os.environ.get("PANDA_TEST_PG_BIN")
    if explicit:
        return Path(explicit)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PgUnavailable("no PostgreSQL binaries found (set PANDA_TEST_PG_BIN to their bin dir)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise PgUnavailable(f"user {name!r} does not exist and useradd is not available")
    out = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise PgUnavailable(f"cannot create user {name!r}: {out.stderr.strip()}")
    return pwd.getpwnam(name)


class PgCluster:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = 0
        self.password = "pw-" + secrets.token_hex(8)
        self.superuser = "postgres"
        self.base: Path | None = None
        self._run_as: list[str] = []
        self._started = False

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        assert self.base is not None
        return self.base / "postgres.log"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._run_as, *argv], capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no server log)"

    def start(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (self.bindir / tool).is_file():
                raise PgUnavailable(f"{self.bindir / tool} not found")
        self.base = scratch_dir("panda-pg-")
        if os.geteuid() == 0:
            user = _ensure_user(os.environ.get("PANDA_TEST_PG_USER", "postgres"))
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", user.pw_name, "--"]
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(self._run_as[2]).pw_uid, -1)
        pwfile.chmod(0o600)
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
            "--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise PgUnavailable(f"initdb failed ({init.returncode}): {init.stderr.strip()}")
        self.port = free_port()
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._started = True  # from here on stop() stops it, whatever happens next
        try:
            started = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                "-o", options, "-w", "-t", str(int(START_DEADLINE)), "start",
                timeout=START_DEADLINE + 10,
            )
        except subprocess.TimeoutExpired:
            raise PgUnavailable(f"pg_ctl start did not return within {START_DEADLINE + 10:.0f}"
                                f" s\n{self._log_tail()}") from None
        if started.returncode != 0:
            raise PgUnavailable(
                f"pg_ctl start failed ({started.returncode}): {started.stderr.strip()}\n"
                f"{self._log_tail()}"
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                psycopg2.connect(**self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                last = exc
                time.sleep(0.05)
        raise PgUnavailable(f"PostgreSQL did not accept connections: {last}\n{self._log_tail()}")

    def dsn(self, dbname: str) -> dict[str, object]:
        return {"host": "127.0.0.1", "port": self.port, "user": self.superuser,
                "password": self.password, "dbname": dbname}

    def url(self, dbname: str) -> URL:
        return URL.create("postgresql+psycopg2", username=self.superuser, password=self.password,
                          host="127.0.0.1", port=self.port, database=dbname)

    def sql(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """``sql`` as the superuser on ``dbname``, autocommit; the rows it returns."""
        conn = psycopg2.connect(**self.dsn(dbname))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def _admin(self, sql: str) -> None:
        self.sql(sql)

    def create_database(self, name: str, template: str = "template0") -> URL:
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def seal_template(self, name: str) -> None:
        """Make ``name`` a template nobody may connect to: a copy fails while anyone is
        connected to its template, so nothing may be."""
        self._admin(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')

    def copy_template(self, template: str, name: str) -> None:
        """Replace the fresh, empty, unused database ``name`` by a copy of ``template``
        (the file-level copy of ``CREATE DATABASE ... TEMPLATE``)."""
        self._admin(f'DROP DATABASE "{name}"')
        self.create_database(name, template)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            if self._started:
                try:
                    self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m",
                              "immediate", "-w", "stop", timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                self._kill_postmaster()
                self._started = False
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None


    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster if pg_ctl could not stop it (its backends follow it)."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.name() in ("postgres", "postmaster"):
                proc.kill()
                proc.wait(10)
        except (OSError, ValueError, IndexError, psutil.Error):
            pass


def url_text(url: URL) -> str:
    """The URL as a string *with* its password (``str(url)`` hides it)."""
    return url.render_as_string(hide_password=False)
