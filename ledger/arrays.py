"""A batch's columns as PostgreSQL array literals (text), cast back to typed arrays by the statement.

Why not pass lists: asyncpg checks every element of a list parameter against the `collections.abc`
ABCs in Python before encoding it, and for a batch of a few hundred operations those checks cost more
than the rest of the Python that writes the batch. A literal is built with a few `str.join` calls per
column, and PostgreSQL's array_in parses it. Inside a double-quoted element only `\\` and `"` are
special; text never holds NUL (PostgreSQL refuses it, and operations are validated against it), which
is what lets `texts` escape a whole column at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_SEPARATOR = "\x00"


def bigints(values: Iterable[int | None]) -> str:
    """Integer elements, any of them NULL. Only ints: ids from the database and validated amounts."""
    # str(None) is "None", which no integer's text contains.
    return "{" + ",".join(map(str, values)).replace("None", "NULL") + "}"


def texts(values: Sequence[str]) -> str:
    """Text elements, none NULL."""
    if not values:
        return "{}"
    joined = _SEPARATOR.join(values)
    if joined.count(_SEPARATOR) != len(values) - 1:
        # A NUL inside a value would be taken for a separator: escape one by one instead, and let
        # PostgreSQL refuse the NUL it then receives.
        return optional_texts(values)
    return '{"' + _escaped(joined).replace(_SEPARATOR, '","') + '"}'


def optional_texts(values: Iterable[str | None]) -> str:
    """Text elements, any of them NULL."""
    return "{" + ",".join("NULL" if value is None else '"' + _escaped(value) + '"' for value in values) + "}"


def _escaped(text: str) -> str:
    """Text as inside a double-quoted array element: backslash first, then the quote."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def byteas(values: Iterable[bytes]) -> str:
    """bytea elements in hex form (`\\x…`), whose backslash an array element must escape."""
    return "{" + ",".join('"\\\\x' + value.hex() + '"' for value in values) + "}"
