"""Every module and file the docs name exists: module paths (``pandaserver/db/stores/leases.py``,
``daemons/fleet/rank.py``, a bare ``fencing.py``), dotted names
(``pandaserver.daemons.master.statusfile``, ``python -m pandaserver.commands.cron``) and
the repository's other files (``etc/panda_server.cfg``, ``rc.d/panda_daemon``).

Read: docs/*.md, README.md, benchmarks/README.md and the text of every module under
pandaserver/ (its docstrings and comments name other modules). A file move that leaves a
reference behind fails here with the file, the line and the name.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pandaserver"
# where a relative module path may start: the repository, the package, tests/, benchmarks/
BASES = (ROOT, PACKAGE, ROOT / "tests", ROOT / "benchmarks")

_ALONE = r"(?<![\w./$~-])"  # not the tail of a longer path (an absolute one is skipped)
# a module path with at least one folder, or a folder of the code (``pandaserver/web/``)
MODULE_PATH = re.compile(_ALONE + r"((?:[A-Za-z_][\w-]*/)+(?:[\w-]+\.py\b|))")
CODE_FOLDERS = ("pandaserver/", "daemons/", "tests/", "benchmarks/", "docs/")
# any other file of the repository, by its top folder
REPO_FILE = re.compile(_ALONE + r"((?:etc|rc\.d|docs|tests|benchmarks|\.ci)/[\w./-]*[\w-])")
# a module file named alone: ``fencing.py`` (``x.py`` and the like are examples)
BARE = re.compile(_ALONE + r"([A-Za-z_]\w+\.py)\b")
DOTTED = re.compile(r"(?<![\w.])(pandaserver(?:\.[A-Za-z_]\w*)+)")
# names that stand for any value (versions/NNNN_what.py, <dir>/x.py)
PLACEHOLDER = re.compile(r"NNNN|\.\.\.|<|\*")


def _sources() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [*docs, ROOT / "README.md", ROOT / "benchmarks" / "README.md",
            *sorted(PACKAGE.rglob("*.py"))]


def _file_names() -> set[str]:
    return {path.name for base in ("pandaserver", "tests", "benchmarks")
            for path in (ROOT / base).rglob("*") if path.is_file()}


def _module_path(ref: str, source: Path) -> Path | None:
    for base in (*BASES, source.parent):
        found = base / ref
        if (found.is_file() if ref.endswith(".py") else found.is_dir()):
            return found
    return None


def _dotted_exists(name: str) -> bool:
    """True when a prefix of ``name`` is a module or package and what follows it (if
    anything) is a name that module mentions (a class, a function, a constant)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        path = ROOT.joinpath(*parts[:cut])
        module = path.with_suffix(".py")
        if path.is_dir() and (path / "__init__.py").is_file():
            module = path / "__init__.py"
        elif not module.is_file():
            continue
        if cut == len(parts):
            return True
        return re.search(rf"\b{re.escape(parts[cut])}\b", module.read_text()) is not None
    return False


def _problems(source: Path, names: set[str]) -> list[str]:
    found = []
    relative = str(source.relative_to(ROOT))
    for number, line in enumerate(source.read_text().splitlines(), 1):
        where = f"{relative}:{number}"
        folder: Path | None = None  # of the last module path on the line: bare names are beside it
        for match in MODULE_PATH.finditer(line):
            ref = match.group(1)
            if ref.endswith("/") and not ref.startswith(CODE_FOLDERS):
                continue  # a folder outside the code (etc/, a user's home): REPO_FILE's
            if PLACEHOLDER.search(line[match.start():match.end() + 3]):
                continue
            exists = _module_path(ref, source)
            if exists is None:
                found.append(f"{where}: {ref} does not exist")
            else:
                folder = exists.parent if exists.is_file() else exists
        for match in REPO_FILE.finditer(line):
            ref = match.group(1)
            if not ref.endswith(".py") and not (ROOT / ref).exists():
                found.append(f"{where}: {ref} does not exist")
        on_line = {m.group(1).rsplit("/", 1)[-1] for m in MODULE_PATH.finditer(line)}
        for match in BARE.finditer(line):
            name = match.group(1)
            if name in on_line:
                continue
            if folder is not None:
                if not (folder / name).is_file():
                    found.append(f"{where}: {name} is not in {folder.relative_to(ROOT)}/")
            elif name not in names:
                found.append(f"{where}: no file is named {name}")
        for match in DOTTED.finditer(line):
            if not _dotted_exists(match.group(1)):
                found.append(f"{where}: {match.group(1)} is not a module (or a name in one)")
    return found


def test_every_module_and_file_the_docs_name_exists() -> None:
    names = _file_names()
    problems = [problem for source in _sources() for problem in _problems(source, names)]
    assert not problems, "\n".join(problems)
