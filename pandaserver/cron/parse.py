"""Read crontab text: job lines, their schedule, user field and command.

A cron command is shell text. ``read_command`` reads just enough of it to find the
script: the first simple command, with redirections, ``%`` standard input, environment
settings and interpreters (``python``, ``sh -c``) taken off. Nothing here runs anything.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pandaserver.config.cronspec import MACROS  # the same shortcuts as a cron entry's
from pandaserver.cron.shell import Token, shell_tokens

Severity = Literal["error", "warning"]
UserField = Literal["auto", "yes", "no"]

SCRIPT_PREFIX = "panda_server-"
SCRIPT_EXTENSIONS = (".py", ".sh")

# Variables that only steer cron itself: dropping them changes nothing a script sees.
_CRON_VARIABLES = frozenset({"MAILTO", "MAILFROM", "SHELL", "CRON_TZ", "TZ", "RANDOM_DELAY"})
# Words that start a command, so are never read as the user field of a system crontab.
_COMMAND_WORDS = frozenset({"sh", "bash", "env", "exec", "nohup", "cd", "perl", "true"})
# Prefixes that are unwrapped silently (env's own settings still warn).
_TRANSPARENT = frozenset({"env", "exec", "nohup"})
# Wrappers whose options the converter does not read: such a line is an error.
_WRAPPERS = frozenset(
    {"flock", "timeout", "nice", "ionice", "sudo", "su", "runuser", "setsid", "time", "xargs",
     "chronic", "cd", "source", "."}
)
_SHELLS = frozenset({"sh", "bash"})
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_ASSIGNMENT_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=")
_ASSIGNMENT_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")



@dataclass(frozen=True)
class Diagnostic:
    """A warning or error about one input line (``line`` None: about the input as a whole)."""

    line: int | None
    severity: Severity
    message: str

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class CronJob:
    """One job line: five schedule fields (macros expanded), the user if any, the command."""

    line: int
    schedule: str
    command: str
    user: str | None = None
    macro: str | None = None

    @property
    def schedule_text(self) -> str:
        """The schedule as written (the macro, when there was one)."""
        return self.macro or self.schedule


@dataclass(frozen=True)
class Command:
    """What a cron command runs: the script name, its arguments, and what was dropped."""

    name: str
    arguments: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def read_crontab(
    lines: Iterable[str], user_field: UserField = "auto"
) -> tuple[list[CronJob], list[Diagnostic]]:
    """Job lines of a user or system crontab, and diagnostics for the rest.

    ``user_field``: "yes" for a system crontab (``/etc/crontab``, ``/etc/cron.d``), "no" for
    a user crontab (``crontab -l``), "auto" to decide line by line (see ``_split_user``).
    """
    jobs: list[CronJob] = []
    notes: list[Diagnostic] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        assignment = _ASSIGNMENT_LINE.match(text)
        if assignment is not None:
            name = assignment.group(1)
            if name not in _CRON_VARIABLES:
                notes.append(
                    Diagnostic(
                        number,
                        "warning",
                        f"the variable {name} is not carried over: scripts run in the daemon's"
                        " environment; set it there if they need it",
                    )
                )
            continue
        try:
            jobs.append(_read_job(number, text, user_field))
        except ValueError as exc:
            notes.append(Diagnostic(number, "error", str(exc)))
    return jobs, notes


def _read_job(number: int, text: str, user_field: UserField) -> CronJob:
    macro: str | None = None
    if text.startswith("@"):
        word, *more = text.split(None, 1)
        rest = more[0] if more else ""
        macro = word.lower()
        if macro == "@reboot":
            raise ValueError(
                "@reboot runs once at boot and has no period: start that command with the"
                " service instead"
            )
        if macro not in MACROS:
            raise ValueError(f"unknown macro {word!r}; known: {', '.join(MACROS)}, @reboot")
        schedule = MACROS[macro]
    else:
        fields = text.split(None, 5)
        if len(fields) < 6:
            raise ValueError(f"expected five schedule fields and a command, got: {text!r}")
        schedule = " ".join(fields[:5])
        rest = fields[5]
    user, command = _split_user(rest.strip(), user_field)
    if not command:
        raise ValueError(f"has no command after the schedule{' and user' if user else ''}")
    return CronJob(number, schedule, command, user, macro)


def _split_user(rest: str, mode: UserField) -> tuple[str | None, str]:
    """Take the user field off a system crontab line.

    In "auto" mode the first word is the user when it looks like a user name and not like a
    command: no ``/``, not an interpreter or known command word, not a ``panda_server-``
    script or a ``.py``/``.sh`` file, and followed by a command that is not an option.
    """
    if mode == "no":
        return None, rest
    parts = rest.split(None, 1)
    if mode == "yes":
        return (parts[0] if parts else None), (parts[1] if len(parts) > 1 else "")
    if len(parts) < 2:
        return None, rest
    first, command = parts
    looks_like_user = (
        _USER.match(first) is not None
        and first not in _COMMAND_WORDS
        and first not in _WRAPPERS
        and _PYTHON.match(first) is None
        and not first.startswith(SCRIPT_PREFIX)
        and not first.endswith(SCRIPT_EXTENSIONS)
        and not command.startswith("-")
    )
    return (first, command) if looks_like_user else (None, rest)


def read_command(command: str) -> Command:
    """The script a cron command runs. Raises ValueError with the reason when there is none."""
    warnings: list[str] = []
    text = _cut_percent(command, warnings)
    return _read_shell_text(text, warnings, depth=0)


def _cut_percent(command: str, warnings: list[str]) -> str:
    """Cron turns an unescaped ``%`` into a newline; what follows is standard input."""
    out: list[str] = []
    index = 0
    while index < len(command):
        char = command[index]
        if char == "\\" and command.startswith("%", index + 1):
            out.append("%")
            index += 2
            continue
        if char == "%":
            warnings.append(
                f"the text after '%' (the command's standard input) is dropped: "
                f"{command[index + 1:]!r}"
            )
            break
        out.append(char)
        index += 1
    return "".join(out)


def _read_shell_text(text: str, warnings: list[str], depth: int) -> Command:
    commands = _simple_commands(text, warnings)
    if not commands:
        raise ValueError("has no command")
    words, rest = commands[0][0], commands[1:]
    if words[0] == "cd" and rest:
        warnings.append(
            f"the working directory ({' '.join(words[1:]) or '~'}) is not carried over:"
            " the script runs in the daemon's working directory"
        )
        words, rest = rest[0][0], rest[1:]
    _refuse_expansions(text, commands[len(commands) - len(rest) - 1], rest)
    if rest:
        warnings.append(
            f"only the first command is converted; dropped: {text[rest[0][1]:].strip()!r}"
        )
    return _script_command(words, warnings, depth)


_Simple = tuple[list[str], int, list[Token]]


def _simple_commands(text: str, warnings: list[str]) -> list[_Simple]:
    """The words of each simple command (redirections and their targets removed), with
    the offset of the operator in front of it and its word tokens; empty commands are
    left out. A redirection to a file (not /dev/null) is warned about."""
    tokens = shell_tokens(text)
    commands: list[_Simple] = [([], 0, [])]
    target = -1
    for index, token in enumerate(tokens):
        if token.kind == "control":
            commands.append(([], token.start, []))
        elif token.kind == "redirect":
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is None or following.kind != "word":
                raise ValueError(f"the redirection {token.text!r} has no target")
            target = index + 1
            if following.text != "/dev/null" and not _is_descriptor(token, following):
                shown = text[token.start : following.start] + following.text
                warnings.append(
                    f"the redirection {shown!r} is not carried over:"
                    " the daemon writes the script's output to its own log"
                )
        elif index != target:
            commands[-1][0].append(token.text)
            commands[-1][2].append(token)
    return [command for command in commands if command[0]]


def _is_descriptor(operator: Token, target: Token) -> bool:
    """``2>&1``, ``<&0``, ``>&-``: a file descriptor duplicated or closed, not a file."""
    return operator.text.endswith("&") and (target.text.isdigit() or target.text == "-")


def _refuse_expansions(text: str, command: _Simple, rest: list[_Simple]) -> None:
    """Raise ValueError when the converted command holds a shell expansion."""
    expanding = [token for token in command[2] if token.expansion]
    if not expanding:
        return
    end = rest[0][1] if rest else len(text)
    raise ValueError(
        f"uses {expanding[0].expansion} ({expanding[0].text!r} in"
        f" {text[command[1]:end].strip(' ;|&')!r}), which the shell expands when cron runs"
        " it: the daemon passes arguments as written, without a shell, so this line is not"
        " converted; compute the value in the script, or write its entry by hand"
    )


def _drop_assignments(words: list[str], warnings: list[str]) -> None:
    while words and _ASSIGNMENT_WORD.match(words[0]):
        warnings.append(
            f"the environment setting {words.pop(0)} is not carried over: set it in the"
            " daemon's environment"
        )


def _script_command(words: list[str], warnings: list[str], depth: int) -> Command:
    words = list(words)
    _drop_assignments(words, warnings)
    while words and posixpath.basename(words[0]) in _TRANSPARENT:
        if posixpath.basename(words.pop(0)) == "env":
            while words and words[0].startswith("-"):
                option = words.pop(0)
                if option in ("-u", "-C") and words:
                    words.pop(0)
        _drop_assignments(words, warnings)
    if not words:
        raise ValueError("has no command")
    program = posixpath.basename(words[0])
    if program in _WRAPPERS:
        raise ValueError(
            f"starts with {program!r}, which the converter does not unwrap: put the script"
            " itself on the line, or write its entry by hand"
        )
    if _PYTHON.match(program):
        return _python_command(words[1:], warnings)
    if program in _SHELLS:
        return _shell_command(program, words[1:], warnings, depth)
    return Command(script_name(words[0]), tuple(words[1:]), tuple(warnings))


def _python_command(args: list[str], warnings: list[str]) -> Command:
    while args and args[0].startswith("-") and args[0] != "-":
        option = args.pop(0)
        if option == "-c":
            raise ValueError("python -c runs inline code: there is no script to convert")
        if option == "-m":
            if not args:
                raise ValueError("python -m names no module")
            module = args.pop(0)
            return Command(module.rsplit(".", 1)[-1], tuple(args), tuple(warnings))
        if option in ("-W", "-X") and args:
            args.pop(0)
    if not args or args[0] == "-":
        raise ValueError("runs python without a script file")
    return Command(script_name(args[0]), tuple(args[1:]), tuple(warnings))


def _shell_command(shell: str, args: list[str], warnings: list[str], depth: int) -> Command:
    while args and args[0][:1] in ("-", "+") and args[0] not in ("-", "--"):
        option = args.pop(0)
        if option in ("-o", "+o") and args:
            args.pop(0)
        elif option.startswith("-") and not option.startswith("--") and "c" in option:
            if not args:
                raise ValueError(f"{shell} -c has no command")
            if depth > 0:
                raise ValueError(f"nests {shell} -c inside a shell command")
            return _read_shell_text(args[0], warnings, depth + 1)
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        raise ValueError(f"runs {shell} without a script file")
    return Command(script_name(args[0]), tuple(args[1:]), tuple(warnings))


def script_name(word: str) -> str:
    """``/opt/panda/usr/bin/panda_server-copyArchive`` -> ``copyArchive``; ``x.py`` -> ``x``."""
    name = posixpath.basename(word)
    if name.startswith(SCRIPT_PREFIX):
        name = name[len(SCRIPT_PREFIX) :]
    for extension in SCRIPT_EXTENSIONS:
        if name.endswith(extension):
            name = name[: -len(extension)]
            break
    if not name:
        raise ValueError(f"gives no script name: {word!r}")
    return name
