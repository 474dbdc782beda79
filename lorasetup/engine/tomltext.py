"""TOML text for files lorasetup writes from scratch: values rendered so any string reads back exactly.

Paths go into literal strings ('C:\\lora\\img' stays readable, nothing is escaped) when they can; a path with a
single quote or a control character becomes a basic string with escapes. Comments never carry a raw control
character (TOML forbids them there), so a folder name with a newline cannot break the file.
"""

from __future__ import annotations

import math
import re

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # forbidden in literal strings and comments (tab is allowed)
_BASIC_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class NotRepresentable(ValueError):
    """A string TOML cannot hold: it is not valid Unicode (a file name that is not UTF-8)."""


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NotRepresentable(f"{text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None
    return text


def basic_string(text: str) -> str:
    """A double-quoted string; backslash, quote and control characters escaped."""
    out = []
    for ch in _unicode(text):
        if ch in _BASIC_ESCAPES:
            out.append(_BASIC_ESCAPES[ch])
        elif _CONTROL.match(ch):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def path_string(text: str) -> str:
    """A literal string when the text allows one (no single quote, no control character), else a basic one."""
    if "'" in _unicode(text) or _CONTROL.search(text):
        return basic_string(text)
    return f"'{text}'"


def value(item: object) -> str:
    """Booleans, numbers and strings (basic), and flat arrays of them."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        return repr(item) if math.isfinite(item) else ("nan" if math.isnan(item) else "inf" if item > 0 else "-inf")
    if isinstance(item, str):
        return basic_string(item)
    if isinstance(item, list):
        return "[" + ", ".join(value(v) for v in item) + "]"
    raise TypeError(f"no TOML rendering for {type(item).__name__}")


def comment(text: str) -> str:
    """`# text` on one line, control characters shown as `?` and invalid Unicode replaced."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    return "# " + _CONTROL.sub("?", clean)
