"""The one exception type for mistakes a user can fix (the CLI prints it as one line), and
``one_line``: any exception as the short line a message or a report quotes."""

from __future__ import annotations

import re


class PartitaError(Exception):
    """Bad input or a bad request: the message says what is wrong and what to do."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """``e`` as one line of at most ``limit`` characters: its type and its message, whitespace
    collapsed and object addresses left out (they differ from run to run; a reason should not)."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r",? ?id\(\)=\d+| at 0x[0-9a-f]+| 0x[0-9a-f]+", "", text)
    name = type(e).__name__
    return text[:limit] if name in text else f"{name}: {text[:limit]}"
