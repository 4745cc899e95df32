"""Secrets: what redaction hides (planted values on each path of the configuration's own
messages), and what it must leave alone (text that only looks like a secret)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pandaserver.config import ConfigError, load_config, secrets
from pandaserver.config.secrets import redact
from pandaserver.preflight.report import render_check

SECRET = "Pl4nted-S3cret-Value"


@pytest.fixture(autouse=True)
def no_registered_secrets() -> Iterator[None]:
    secrets.forget_all()
    yield
    secrets.forget_all()


def write(tmp_path: Path, body: str, name: str = "panda_server.cfg") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def daemon(config: object, *extra: str) -> str:
    lines = ["[daemon]", "enable = True", "package = testscripts", *extra,
             "config = " + json.dumps(config)]
    return "\n".join(lines) + "\n"


def load_problems(path: Path) -> str:
    cfg = load_config(str(path))
    return "\n".join(str(p) for p in [*cfg.daemon.problems, *cfg.daemon.fatal])


# ----- leaks --------------------------------------------------------------------------------
def test_an_ini_line_without_equals_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, f"[daemon]\nenable = True\ndbpasswd {SECRET}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    text = str(raised.value)
    assert SECRET not in text
    assert f"{path}: cannot parse: line 3 is not 'key = value'" in text


def test_a_line_before_any_section_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, f"dbpasswd = {SECRET}\n[daemon]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert SECRET not in str(raised.value)
    assert "line 1 comes before any [section] header" in str(raised.value)


def test_a_json_syntax_error_masks_the_values_of_the_line_it_quotes(tmp_path: Path) -> None:
    body = ("[daemon]\nenable = True\npackage = testscripts\nconfig = {\n"
            f'    "echo": {{"period": 60, "arguments": ["--db", "{SECRET}"] }}\n')
    text = load_problems(write(tmp_path, body))
    assert SECRET not in text
    assert ("(file line 5, column 75: '\"echo\": {\"period\": 60, \"arguments\": [\"***\","
            " \"***\"] }')") in text


@pytest.mark.parametrize("key", ["db_pw", "dbpaswd", "db_ulr_x"])
def test_an_unknown_keys_string_value_is_not_shown(tmp_path: Path, key: str) -> None:
    text = load_problems(write(tmp_path, daemon({"a": {"period": 60}}, f"{key} = {SECRET}")))
    assert SECRET not in text
    assert f"key {key!r}: unknown key (value " in text


def test_a_mistyped_arguments_key_shows_no_argument(tmp_path: Path) -> None:
    config = {"echo": {"period": 60, "argumnets": ["--password", SECRET]}}
    text = load_problems(write(tmp_path, daemon(config)))
    assert SECRET not in text
    assert ("key 'argumnets': unknown key (value not shown: the value of an unknown key may be"
            ' a secret) (did you mean "arguments"?)') in text
    assert SECRET not in redact(f"the script was given {SECRET}")  # registered, all the same


def test_an_unknown_keys_number_is_still_shown(tmp_path: Path) -> None:
    text = load_problems(write(tmp_path, daemon({"a": {"period": 60, "perod": 5}},
                                                "n_porc = 4")))
    assert "key 'n_porc': unknown key (value '4')" in text
    assert "key 'perod': unknown key (value 5)" in text


def test_positional_password_arguments_are_hidden_in_the_check_config_table(
        tmp_path: Path) -> None:
    config = {"echo": {"period": 60, "arguments": ["--password", SECRET, "--api-token=tok3nValue",
                                                   "--verbose"]}}
    cfg = load_config(str(write(tmp_path, daemon(config))))
    text, _ = render_check(cfg, try_import=False)
    assert SECRET not in text and "tok3nValue" not in text
    assert "--password *** --api-token=*** --verbose" in text
    # and wherever else the value appears (what the script prints of it, say)
    assert redact(f"connecting with {SECRET}") == "connecting with ***"


def test_an_option_followed_by_its_value_in_free_text() -> None:
    assert redact("run: tool --password hunter2 --user bob") == "run: tool --password *** --user bob"
    assert redact("tool -db-pass 'a b' next") == "tool -db-pass '***' next"


# ----- what is not a secret -----------------------------------------------------------------
def test_a_file_name_holding_secret_keeps_the_message_whole(tmp_path: Path) -> None:
    path = write(tmp_path, "no section\n", name="panda-secret.cfg")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert f"{path}: cannot parse: line 1" in str(raised.value)
    assert redact("db-secret.cfg: cannot parse") == "db-secret.cfg: cannot parse"
    assert redact("/etc/token.d/x: cannot read") == "/etc/token.d/x: cannot read"


def test_the_quote_after_a_password_stays() -> None:
    assert redact('"--password=hunter22"') == '"--password=***"'
    assert redact("args ['--token=abcdef', 'x']") == "args ['--token=***', 'x']"
    assert redact('password: "hunter22"') == 'password: "***"'


def test_a_database_user_without_a_password_is_no_secret(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://postgres@db.example/panda"
    load_config(str(write(tmp_path, daemon({"a": {"period": 60}}, f"db_url = {url}"))))
    assert secrets.registered() == frozenset()
    assert redact(f"database {url}: the postgres server") == \
        f"database {url}: the postgres server"
    # a token alone before "@" of any other URL is still hidden, and a password always
    assert redact("https://ghp_tok3n@github.com/x") == "https://***@github.com/x"
    assert redact("postgresql://postgres:pw1234@db/x") == "postgresql://postgres:***@db/x"


def test_secret_names() -> None:
    assert all(secrets.is_secret_name(name) for name in
               ("db_pw", "pw", "DB_PW", "dbpasswd", "api_token", "ssh-key"))
    assert not any(secrets.is_secret_name(name) for name in
                   ("n_proc", "upward", "stop_grace", "pwm_rate"))


# ----- ${VAR} inside a value -----------------------------------------------------------------
def test_a_variable_inside_a_value_is_expanded_and_its_password_hidden(tmp_path: Path) -> None:
    body = daemon({"a": {"period": 60}},
                  "db_url = postgresql+psycopg2://panda:${PANDA_PW}@db.example/panda")
    cfg = load_config(str(write(tmp_path, body)), environ={"PANDA_PW": SECRET})
    assert cfg.daemon.db_url == f"postgresql+psycopg2://panda:{SECRET}@db.example/panda"
    assert redact(f"cannot connect to {cfg.daemon.db_url} as {SECRET}") == \
        "cannot connect to postgresql+psycopg2://panda:***@db.example/panda as ***"


def test_an_unset_variable_inside_a_value_is_named(tmp_path: Path) -> None:
    body = daemon({"a": {"period": 60}}, "db_url = postgresql://panda:${PANDA_PW}@db/panda")
    text = load_problems(write(tmp_path, body))
    assert "key 'db_url': refers to environment variable $PANDA_PW, which is not set" in text


def test_a_bare_dollar_inside_a_value_stays() -> None:
    from pandaserver.config.files import expand_env

    assert expand_env("postgresql://u:pa$word@h/db", {}) == "postgresql://u:pa$word@h/db"
    assert expand_env("a${{B}}c$D", {"B": "1", "D": "2"}) == "a1c$D"
    assert expand_env("$D", {"D": "2"}) == "2"


def test_a_refused_password_is_told_from_an_outage() -> None:
    from pandaserver.db.direct.credentials import credentials_refused

    class Orig(Exception):
        pass

    class Wrapped(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__(str(orig))
            self.orig = orig

    assert credentials_refused(Wrapped(Orig('connection to server at "h" failed: FATAL: '
                                            ' password authentication failed for user "u"')))
    assert credentials_refused(Wrapped(Orig(1045, "Access denied for user 'u'@'h'")))
    assert credentials_refused(Orig('FATAL:  role "panda_daemon" does not exist'))
    assert not credentials_refused(Wrapped(Orig("connection refused: is the server running")))
    assert not credentials_refused(Wrapped(Orig(2003, "Can't connect to MySQL server")))
