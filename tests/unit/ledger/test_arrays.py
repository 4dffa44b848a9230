"""Array literals for a batch's columns (ledger/arrays.py), without a database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger import arrays


def test_bigints_write_nulls_as_null() -> None:
    assert arrays.bigints([1, None, -3, 0]) == "{1,NULL,-3,0}"
    assert arrays.bigints([]) == "{}"


def test_texts_quote_every_element_and_escape_backslash_and_quote() -> None:
    assert arrays.texts(["a", 'say "hi"', "c:\\dir", "", "NULL", "{,}"]) == (
        '{"a","say \\"hi\\"","c:\\\\dir","","NULL","{,}"}'
    )
    assert arrays.texts([]) == "{}"


def test_optional_texts_write_none_as_null_and_quote_the_text_null() -> None:
    assert arrays.optional_texts([None, "NULL", 'x"']) == '{NULL,"NULL","x\\""}'


def test_a_nul_inside_a_text_is_not_taken_for_a_separator() -> None:
    # Each value stays one element; PostgreSQL then refuses the NUL itself.
    assert arrays.texts(["a\x00b", "c"]) == '{"a\x00b","c"}'


def test_byteas_are_hex_with_an_escaped_backslash() -> None:
    assert arrays.byteas([b"\x00\xff", b""]) == '{"\\\\x00ff","\\\\x"}'


def _parse_quoted(literal: str) -> list[str | None]:
    """A reference reader of the array syntax these functions write (quoted elements or NULL)."""
    assert literal[0] == "{"
    assert literal[-1] == "}"
    body, items, index = literal[1:-1], [], 0
    while index < len(body):
        if body.startswith("NULL", index):
            items.append(None)
            index += 4
        else:
            assert body[index] == '"'
            index += 1
            chars = []
            while body[index] != '"':
                if body[index] == "\\":
                    index += 1
                chars.append(body[index])
                index += 1
            items.append("".join(chars))
            index += 1
        if index < len(body):
            assert body[index] == ","
            index += 1
    return items


texts_without_nul = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20)


@given(st.lists(texts_without_nul, max_size=20))
def test_texts_read_back_as_written(values: list[str]) -> None:
    assert _parse_quoted(arrays.texts(values)) == values


@given(st.lists(st.one_of(st.none(), texts_without_nul), max_size=20))
def test_optional_texts_read_back_as_written(values: list[str | None]) -> None:
    assert _parse_quoted(arrays.optional_texts(values)) == values
