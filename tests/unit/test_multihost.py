"""A db_url listing a primary and its standbys: both spellings reach psycopg2 as libpq's
host list, the password is never shown, and what cannot work is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from pandaserver.config import load_config, secrets
from pandaserver.config.secrets import redact
from pandaserver.db.base import multihost
from pandaserver.db.base.engine import DatabaseConfigError, database_url, safe_url
from pandaserver.preflight.dbsettings import database_findings

PW = "S3cret-pw"
LIBPQ = f"postgresql+psycopg2://panda:{PW}@db1:5432,db2:5433/panda?target_session_attrs=read-write"
QUERY = (f"postgresql+psycopg2://panda:{PW}@/panda?host=db1:5432&host=db2:5433"
         "&target_session_attrs=read-write")


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "panda_server.cfg"
    path.write_text("[daemon]\nenable = True\npackage = testscripts\n"
                    f"db_url = {url}\nconfig = {json.dumps({'a': {'period': 60}})}\n")
    return path


@pytest.mark.parametrize("url", [LIBPQ, QUERY], ids=["libpq", "query"])
def test_both_spellings_reach_libpq_as_one_host_list(tmp_path: Path, url: str) -> None:
    parsed = database_url(load_config(str(config(tmp_path, url))))
    _, kwargs = create_engine(parsed).dialect.create_connect_args(parsed)
    assert kwargs["host"] == "db1,db2"
    assert kwargs["port"] == "5432,5433"
    assert kwargs["target_session_attrs"] == "read-write"
    assert kwargs["password"] == PW
    assert PW not in safe_url(parsed)
    assert PW not in redact(f"cannot connect to {url}")
    secrets.forget_all()


def test_a_url_of_one_host_is_left_as_it_is() -> None:
    one = f"postgresql+psycopg2://panda:{PW}@db1:5432/panda"
    assert multihost.normalize(one) == one
    assert multihost.problem(one) is None
    assert multihost.listed_hosts(one) == ["db1:5432"]


@pytest.mark.parametrize(("url", "words"), [
    ("postgresql+psycopg2://panda:{pw}@db1,db2/panda", "no target_session_attrs"),
    ("postgresql+psycopg2://panda:{pw}@db1,db2/panda?target_session_attrs=any",
     "target_session_attrs=any"),
    ("mysql+pymysql://panda:{pw}@db1,db2/panda", "connects to one"),
])
def test_several_hosts_that_cannot_find_the_primary_are_refused(tmp_path: Path, url: str,
                                                                 words: str) -> None:
    cfg = load_config(str(config(tmp_path, url.format(pw=PW))))
    with pytest.raises(DatabaseConfigError) as refused:
        database_url(cfg)
    message = str(refused.value)
    assert "[daemon] key 'db_url'" in message and words in message
    assert PW not in message
    _, findings = database_findings(cfg)
    assert [level for level, _, _ in findings] == ["error"]
    assert words in findings[0][1]
    secrets.forget_all()
