"""JSON a client sends, parsed within stated bounds, so hostile JSON is a 400 and never a 500.

Python's parser recurses once per nested array or object: 100,000 ``[`` are a RecursionError, and
a long document costs time before it fails. ``loads`` checks the size first, then the nesting
depth with one linear scan that skips strings (brackets inside them and escaped quotes do not
count) and never recurses, and only then parses. It also holds the text to strict JSON: UTF-8,
no ``NaN`` or ``Infinity`` (nor a number beyond a float's range), no number literal over
``MAX_NUMBER_CHARS`` characters (Python refuses integers of over 4,300 digits with a bare
ValueError, and converting long ones is slow).
Every refusal is ``InvalidParameter`` naming what was sent and the limit it broke, never quoting
the text (the bridge logs the reason).
"""

from __future__ import annotations

import json
import math
import re
from functools import partial
from typing import Any

from facematch.errors import InvalidParameter

#: The deepest nesting of arrays and objects accepted (a scalar is depth 0, ``[]`` depth 1).
MAX_DEPTH = 32
#: The longest number literal accepted (a float's repr is at most 24 characters).
MAX_NUMBER_CHARS = 100
# A string (to its closing quote, or to the end when unterminated) or one bracket; possessive,
# so the scan never backtracks and stays linear in the text's length.
_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.S)


def loads(data: bytes | str, *, what: str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``data`` (UTF-8 when bytes); ``what`` names it in the error message.

    Refused with ``InvalidParameter``: over ``max_bytes`` bytes (UTF-8) or nested deeper than
    ``max_depth``, both checked before parsing, then anything that is not strict JSON."""
    if len(data) > max_bytes:  # a str of more characters has at least as many bytes
        raise InvalidParameter(_too_large(what, len(data), max_bytes))
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        size = len(data) if isinstance(data, bytes) else len(text.encode("utf-8"))
    except UnicodeError:
        raise InvalidParameter(f"{what} is not UTF-8 text") from None
    if size > max_bytes:
        raise InvalidParameter(_too_large(what, size, max_bytes))
    if _deeper_than(text, max_depth):
        raise InvalidParameter(
            f"{what} nests arrays and objects more than {max_depth} levels deep; "
            f"at most {max_depth} are accepted"
        )
    try:
        return json.loads(
            text,
            parse_constant=partial(_constant, what),
            parse_int=partial(_number, what, int),
            parse_float=partial(_number, what, float),
        )
    except json.JSONDecodeError as error:
        raise InvalidParameter(
            f"{what} is not valid JSON ({error.msg}: line {error.lineno} column {error.colno})"
        ) from None


def _too_large(what: str, size: int, max_bytes: int) -> str:
    return f"{what} is {size} bytes; at most {max_bytes} bytes are accepted"


def _deeper_than(text: str, max_depth: int) -> bool:
    """Whether ``text`` opens more than ``max_depth`` arrays or objects at once (strings skipped;
    an unterminated one runs to the end, as it does for the parser, which then refuses it)."""
    depth = 0
    for token in _TOKEN.finditer(text):
        bracket = token[0]
        if bracket == "[" or bracket == "{":
            depth += 1
            if depth > max_depth:
                return True
        elif bracket == "]" or bracket == "}":
            depth -= 1
    return False


def _constant(what: str, name: str) -> None:
    raise InvalidParameter(f"{what} holds {name}, which JSON does not allow")


def _number(what: str, kind: type, literal: str) -> int | float:
    """A number literal as ``kind``, refused when over ``MAX_NUMBER_CHARS`` characters or
    beyond a float's range (``1e400`` would be infinity)."""
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidParameter(
            f"{what} holds a number of {len(literal)} characters; at most "
            f"{MAX_NUMBER_CHARS} are accepted"
        )
    value = kind(literal)
    if not math.isfinite(value):
        raise InvalidParameter(f"{what} holds a number beyond a float's range")
    return value
