"""Split shell text into words, control operators and redirections, as cron's shell reads
it, noting in each word what the shell would expand (``$VAR``, ``$(...)``, backquotes).
Nothing here runs anything."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

_OPERATORS = sorted(
    ["&>>", "<<<", "&&", "&>", "||", "|&", ">>", ">&", ">|", "<<", "<&", "<>", ";", "|", "&",
     ">", "<"],
    key=len,
    reverse=True,
)


class Token(NamedTuple):
    kind: Literal["word", "control", "redirect"]
    text: str
    start: int
    expansion: str = ""  # what the shell would expand in this word ("" when nothing)


# What the shell expands after an unquoted or double-quoted ``$``: the daemon passes
# arguments as written, without a shell, so a word holding one cannot be converted.
_EXPANSIONS = {"(": "a command substitution", "{": "a variable"}
_PARAMETER = re.compile(r"[A-Za-z_0-9?#@*!$-]")


def shell_tokens(text: str) -> list[Token]:
    """Split shell text into words, control operators and redirections (with fd digits)."""
    tokens: list[Token] = []
    word: list[str] = []
    start = -1  # where the open word began; -1 when none is open
    quoted = False
    expansion = ""
    index = 0

    def close() -> None:
        nonlocal start, quoted, expansion
        if start >= 0:
            tokens.append(Token("word", "".join(word), start, expansion))
        word.clear()
        start, quoted, expansion = -1, False, ""

    while index < len(text):
        char = text[index]
        if char in " \t":
            close()
            index += 1
            continue
        if char == "#" and start < 0:
            break
        operator = next((op for op in _OPERATORS if text.startswith(op, index)), None)
        if operator is not None:
            is_redirect = operator[0] in "<>" or operator.startswith("&>")
            if is_redirect and start >= 0 and not quoted and "".join(word).isdigit():
                at = start  # "2>": the digits name the file descriptor
                word.clear()
                start = -1
            else:
                close()
                at = index
            tokens.append(Token("redirect" if is_redirect else "control", operator, at))
            index += len(operator)
            continue
        if start < 0:
            start = index
        expansion = expansion or _expansion_at(text, index)
        if char == '"':
            end = _double_quote_end(text, index + 1)
            expansion = expansion or next(
                (found for at in range(index + 1, end) if (found := _expansion_at(text, at))), ""
            )
        if char == "\\":
            word.append(text[index + 1 : index + 2])
            quoted, index = True, index + 2
        elif char == "'":
            end = text.find("'", index + 1)
            if end < 0:
                raise ValueError("has an unterminated single quote")
            word.append(text[index + 1 : end])
            quoted, index = True, end + 1
        elif char == '"':
            part, index = _double_quoted(text, index + 1)
            word.append(part)
            quoted = True
        else:
            word.append(char)
            index += 1
    close()
    return tokens


def _expansion_at(text: str, index: int) -> str:
    """What the shell expands at ``index`` (a ``$`` or a backquote), or ""."""
    char = text[index]
    if index > 0 and text[index - 1] == "\\":
        return ""
    if char == "`":
        return "a command substitution"
    if char != "$":
        return ""
    following = text[index + 1 : index + 2]
    if following in _EXPANSIONS:
        return _EXPANSIONS[following]
    return "a variable" if _PARAMETER.match(following) else ""


def _double_quote_end(text: str, index: int) -> int:
    """Where the double-quoted string starting after its quote at ``index - 1`` ends."""
    while index < len(text) and text[index] != '"':
        index += 2 if text[index] == "\\" else 1
    return index


def _double_quoted(text: str, index: int) -> tuple[str, int]:
    """The text of a double-quoted string starting after its quote, and the index after it."""
    out: list[str] = []
    while index < len(text):
        char = text[index]
        if char == '"':
            return "".join(out), index + 1
        if char == "\\" and text[index + 1 : index + 2] in ('"', "\\", "$", "`"):
            out.append(text[index + 1])
            index += 2
            continue
        out.append(char)
        index += 1
    raise ValueError("has an unterminated double quote")
