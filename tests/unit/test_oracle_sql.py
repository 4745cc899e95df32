"""What of PanDA scripts' Oracle SQL is rewritten per backend, and what is left as written
(pandaserver/taskbuffer/oraclesql.py): pure, compiled for each dialect without a server."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

from pandaserver.taskbuffer.oraclesql import first_keyword, translate, untranslated_hint

PG, MY, LITE = postgresql.dialect(), mysql.dialect(), sqlite.dialect()
SCHEMAS = {"ATLAS_PANDA": "doma_panda", "ATLAS_PANDAMETA": None}


@pytest.mark.parametrize("dialect", [PG, MY])
def test_schema_prefixes_follow_the_server_keys(dialect: Dialect) -> None:
    sql = "SELECT * FROM ATLAS_PANDA.jobsActive4 a, atlas_pandameta.schedconfig s"
    assert translate(sql, dialect, SCHEMAS) == \
        "SELECT * FROM doma_panda.jobsActive4 a, schedconfig s"


def test_sqlite_has_no_schemas() -> None:
    assert translate("DELETE FROM ATLAS_PANDA.t", LITE, SCHEMAS) == "DELETE FROM t"


def test_dates_become_the_database_clock() -> None:
    assert translate("WHERE t < SYSDATE", PG, {}) == "WHERE t < (statement_timestamp())"
    assert translate("WHERE t < CURRENT_DATE", MY, {}) == "WHERE t < (UTC_TIMESTAMP(6))"
    shifted = translate("WHERE t > SYSDATE - 1/24", PG, {})
    assert "statement_timestamp() + CAST((-86400.0 * 1 / 24.0) AS DOUBLE PRECISION)" in shifted
    assert "(86400.0 * :n)" in translate("WHERE t < sysdate+:n", LITE, {})
    assert "(-86400.0 * :h / 24.0)" in translate("WHERE t > SYSDATE - ( :h / 24 )", MY, {})


@pytest.mark.parametrize("sql", [
    "SELECT 'SYSDATE - 1 ATLAS_PANDA.x' FROM t",  # a literal
    'SELECT "SYSDATE" FROM t',  # a quoted identifier
    "SELECT a FROM t -- SYSDATE\n",  # comments
    "SELECT a /* ATLAS_PANDA.t SYSDATE */ FROM t",
    "SELECT :sysdate, my_sysdate, t.sysdate FROM t",  # a bind, other names
    "WHERE t > SYSDATE - 1 * 2",  # arithmetic of another shape: left for the error
    "WHERE t > SYSDATE - f(1)",
])
def test_what_is_left_as_written(sql: str) -> None:
    assert translate(sql, PG, SCHEMAS) == sql


def test_the_hint_names_what_is_left() -> None:
    hint = untranslated_hint("SELECT NVL(a, 0) FROM dual WHERE ROWNUM <= 1 AND 'NVL' = x")
    assert hint is not None and "(NVL, DUAL, ROWNUM)" in hint
    assert untranslated_hint("SELECT a FROM t WHERE b = 'ROWNUM'") is None


@pytest.mark.parametrize(("sql", "word"), [
    ("INSERT INTO t VALUES (1)", "INSERT"), ("  update t set a=1", "UPDATE"),
    ("/* c */ -- d\n DELETE FROM t", "DELETE"), ("(SELECT 1)", "SELECT"),
    ("'x'", ""), ("", "")])
def test_first_keyword(sql: str, word: str) -> None:
    assert first_keyword(sql) == word
