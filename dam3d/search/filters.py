"""Metadata filters of `dam3d search --where` and the web page: a small, safe expression language.

    category == "chairs" and price < 100 and colour in ("red", "blue")

Grammar (no `eval`: a tokenizer and a recursive-descent parser):

    filter     := condition ("and" condition)*
    condition  := COLUMN ("==" | "!=" | "<" | ">") LITERAL
                | COLUMN "in" "(" LITERAL ("," LITERAL)* ")"
    LITERAL    := a string in double quotes (\\" and \\\\ escape) | a number (-12, 3.5)
    COLUMN     := a name of letters, digits and _ (not starting with a digit): a column of the
                  index's assets.parquet (`sku`, `asset_id`, the catalogue manifest's extra columns)

How values compare: manifest values are usually text (a CSV stays text), so a number literal
compares numerically with a value that reads as a number (`49.90`, `49,90` with a decimal comma,
or a number column of a Parquet manifest), and a row whose value is not a number matches no
numeric `==`, `<`, `>` or `in`. A string literal compares with the value's text (`<`/`>`:
in text order, e.g. ISO dates). A row with no value in the column (missing, empty) matches only `!=`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

OPERATORS = ("==", "!=", "<", ">", "in")
KEYWORDS = ("and", "in")
Literal = str | float

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[(),])
""", re.VERBOSE)


class FilterError(ValueError):
    """A filter that does not parse, or names a column the index does not have.

    `position` is the 0-based character offset in the filter text where the problem is;
    the message names the token or column and that position (as "at character N", 1-based).
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class _Token:
    kind: str      # "string", "number", "name", "op", "punct", "end"
    text: str
    position: int


@dataclass(frozen=True)
class Condition:
    """One comparison: `column op values[0]`, or `column in values`."""

    column: str
    op: str                       # one of OPERATORS
    values: tuple[Literal, ...]   # str or float

    def matches(self, value: object) -> bool:
        """Whether one row's value of `column` satisfies the condition (rules in the module docstring)."""
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            return self.op == "!="
        hits = [_compare(value, literal, "==" if self.op in ("in", "!=") else self.op) for literal in self.values]
        return not hits[0] if self.op == "!=" else any(hits)


@dataclass(frozen=True)
class Filter:
    """A parsed filter: the conjunction of its conditions; `text` is what was parsed."""

    text: str
    conditions: tuple[Condition, ...]

    def mask(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """(N,) bool: which of the N rows (dicts, e.g. Index.assets) match every condition."""
        return np.fromiter((all(c.matches(row.get(c.column)) for c in self.conditions) for row in rows),
                           dtype=bool, count=len(rows))


def _number(value: object) -> float | None:
    """The value as a number: a number, or text that reads as one (a decimal comma too); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    for candidate in (text, text.replace(",", ".") if text.count(",") == 1 and "." not in text else None):
        if candidate is None:
            continue
        try:
            number = float(candidate)
        except ValueError:
            continue
        return None if math.isnan(number) else number
    return None


def _compare(value: object, literal: Literal, op: str) -> bool:
    if isinstance(literal, float):
        left: object = _number(value)
        if left is None:
            return False
    else:
        left = str(value)
    if op == "==":
        return left == literal
    if op == "<":
        return left < literal   # type: ignore[operator] - both float or both str
    return left > literal       # type: ignore[operator]


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        m = _TOKEN.match(text, position)
        if m is None:
            bad = text[position]
            hint = " (strings take double quotes)" if bad == "'" else " (use == to compare)" if bad == "=" else ""
            raise FilterError(f"unexpected character {bad!r} at character {position + 1}{hint}", position)
        if m.lastgroup != "space":
            tokens.append(_Token(m.lastgroup or "", m.group(), position))
        position = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, columns: Sequence[str]) -> None:
        self.text = text
        self.columns = list(columns)
        self.tokens = _tokens(text)
        self.at = 0

    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _next(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _error(self, token: _Token, wanted: str) -> FilterError:
        found = "the end of the filter" if token.kind == "end" else repr(token.text)
        return FilterError(f"expected {wanted} at character {token.position + 1}, found {found}", token.position)

    def _expect(self, kind: str, text: str, wanted: str) -> _Token:
        token = self._next()
        if token.kind != kind or token.text != text:
            raise self._error(token, wanted)
        return token

    def _literal(self) -> Literal:
        token = self._next()
        if token.kind == "string":
            return re.sub(r"\\(.)", r"\1", token.text[1:-1])
        if token.kind == "number":
            return float(token.text)
        raise self._error(token, 'a string in double quotes or a number')

    def _condition(self) -> Condition:
        token = self._next()
        if token.kind != "name" or token.text in KEYWORDS:
            raise self._error(token, "a column name")
        if token.text not in self.columns:
            known = ", ".join(self.columns)
            raise FilterError(f"unknown column {token.text!r} at character {token.position + 1}; the index has: {known}",
                              token.position)
        op = self._next()
        if op.text in ("<=", ">="):
            raise FilterError(f"operator {op.text!r} at character {op.position + 1} is not supported; "
                              f"the filter has {' '.join(OPERATORS)} (e.g. price < 100.01)", op.position)
        if op.kind == "op":
            return Condition(token.text, op.text, (self._literal(),))
        if op.kind == "name" and op.text == "in":
            self._expect("punct", "(", '"(" after in')
            values = [self._literal()]
            while self._peek().text == ",":
                self._next()
                values.append(self._literal())
            self._expect("punct", ")", '"," or ")"')
            return Condition(token.text, "in", tuple(values))
        raise self._error(op, f"one of {' '.join(OPERATORS)} after {token.text!r}")

    def parse(self) -> Filter:
        conditions = [self._condition()]
        while self._peek().kind != "end":
            token = self._next()
            if token.kind != "name" or token.text != "and":
                raise self._error(token, '"and" or the end of the filter')
            conditions.append(self._condition())
        return Filter(self.text, tuple(conditions))


def parse_filter(text: str, columns: Sequence[str]) -> Filter:
    """Parse a filter over the given column names (grammar in the module docstring).

    Raises FilterError (a ValueError) for an empty filter, bad syntax or an unknown column:
    the message names the token or column and its position.
    """
    if not text.strip():
        raise FilterError("empty filter: give a condition such as category == \"chairs\"", 0)
    return _Parser(text, columns).parse()
