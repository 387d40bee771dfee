"""Parse JSON from the wire: fast in the common case, exact about what is wrong otherwise.

orjson parses every chunk and body. It refuses some valid JSON it cannot represent: a number
beyond a double (``1e400``), an integer beyond 64 bits. Refusing those would drop an answer
over one field, so the standard library reads what orjson refuses (``1e400`` becomes ``inf``,
which the usage parser then ignores), and only when both refuse is the text called invalid,
with the reason, line and column.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["loads"]


def loads(data: bytes | str) -> Any:
    """The value ``data`` holds; ``ValueError`` saying what is wrong when it is not JSON."""
    try:
        return orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError):
        pass
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not valid UTF-8 at byte {exc.start}") from None
    else:
        text = data
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ValueError(str(exc)) from None
