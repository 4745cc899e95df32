"""The preflight starts its import check (a subprocess) before its other checks, so the two
overlap; a check that fails meanwhile ends the subprocess it started."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from pandaserver.config import load_config
from pandaserver.preflight import imports
from pandaserver.preflight import validate as preflight


def test_a_check_that_fails_meanwhile_ends_the_import_probe(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg_file = tmp_path / "panda_server.cfg"
    cfg_file.write_text("[daemon]\nenable = True\npackage = pandaserver.daemons.scripts\n"
                        'config = {"dummy_test": {"period": 600}}\n', encoding="utf-8")
    probes: list[subprocess.Popen[bytes]] = []
    start = imports.start_probe

    def started(*args: Any, **kwargs: Any) -> imports.StartedProbe:
        probe = start(*args, **kwargs)
        assert probe.proc is not None
        probes.append(probe.proc)
        return probe

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        assert probes, "the import check starts first, to run beside this one"
        raise RuntimeError("the database check failed")

    monkeypatch.setattr(imports, "start_probe", started)
    monkeypatch.setattr(preflight, "database_findings", unreachable)
    with pytest.raises(RuntimeError, match="the database check failed"):
        preflight.validate(load_config(str(cfg_file)), preflight.RUN, cwd=str(tmp_path))
    (proc,) = probes
    assert proc.returncode is not None  # killed and reaped, not left to run
