"""A small PromQL evaluator over two scrapes, for the subset our dashboards use: selectors with
matchers, rate/increase over the scrapes, sum/avg/min/max by, and binary arithmetic."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
TOKEN = re.compile(r'\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)'
                   r'|(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>=~|!~|!=|[-+*/(){}\[\],=]))')
AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "sum": sum, "avg": lambda v: sum(v) / len(v), "min": min, "max": max}
ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": lambda a, b: _divide(a, b)}


@dataclass
class Scrape:
    """One scrape: each sample's name and labels → value, at `at` seconds."""

    at: float
    samples: dict[tuple[str, Labels], float]


def _divide(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a)
    return a / b


def evaluate(expr: str, first: Scrape, second: Scrape,
             variables: dict[str, str] | None = None) -> Vector:
    """The instant vector `expr` yields at `second`; range functions compare it with `first`."""
    for name, value in (variables or {}).items():
        expr = expr.replace(f"${name}", value)
    parser = _Parser(_tokens(expr), first, second)
    result = parser.expression()
    if parser.pos != len(parser.tokens):
        raise ValueError(f"unparsed rest of {expr!r}: {parser.tokens[parser.pos:]}")
    return result


def _tokens(expr: str) -> list[tuple[str, str]]:
    found, pos = [], 0
    while pos < len(expr.rstrip()):
        match = TOKEN.match(expr, pos)
        if match is None or match.lastgroup is None:
            raise ValueError(f"cannot read {expr[pos:]!r}")
        found.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return found


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], first: Scrape, second: Scrape) -> None:
        self.tokens, self.pos, self.first, self.second = tokens, 0, first, second

    def peek(self) -> str:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else ""

    def take(self, want: str | None = None) -> str:
        text = self.tokens[self.pos][1]
        if want is not None and text != want:
            raise ValueError(f"expected {want!r}, found {text!r}")
        self.pos += 1
        return text

    def expression(self) -> Vector:
        left = self.term()
        while self.peek() in ARITHMETIC:
            op = ARITHMETIC[self.take()]
            right = self.term()
            # one-to-one matching on all labels (what `a / b` does without on/ignoring)
            left = {k: op(v, right[k]) for k, v in left.items() if k in right}
        return left

    def term(self) -> Vector:
        word = self.peek()
        if word == "(":
            self.take("(")
            inner = self.expression()
            self.take(")")
            return inner
        if word in AGGREGATIONS:
            return self.aggregation()
        if word in ("rate", "increase"):
            return self.range_function()
        return self.selector(self.second)

    def aggregation(self) -> Vector:
        combine = AGGREGATIONS[self.take()]
        by: list[str] = []
        if self.peek() == "by":
            self.take("by")
            by = self.label_list()
        self.take("(")
        inner = self.expression()
        self.take(")")
        groups: dict[Labels, list[float]] = {}
        for labels, value in inner.items():
            key = frozenset((k, v) for k, v in labels if k in by)
            groups.setdefault(key, []).append(value)
        return {key: combine(values) for key, values in groups.items()}

    def label_list(self) -> list[str]:
        self.take("(")
        names = []
        while self.peek() != ")":
            names.append(self.take())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return names

    def range_function(self) -> Vector:
        per_second = self.take() == "rate"
        self.take("(")
        start = self.pos
        before = self.selector(self.first)
        self.pos = start
        after = self.selector(self.second)
        self.take("[")
        while self.peek() != "]":
            self.take()  # the range itself: the two scrapes stand for it
        self.take("]")
        self.take(")")
        span = self.second.at - self.first.at
        out = {}
        for labels, value in after.items():
            if labels in before:
                grown = value - before[labels] if value >= before[labels] else value  # a reset
                out[labels] = grown / span if per_second else grown
        return out

    def selector(self, scrape: Scrape) -> Vector:
        name = self.take()
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                label, op, text = self.take(), self.take(), self.take()
                matchers.append((label, op, text[1:-1].replace('\\"', '"')))
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
        return {labels: value for (metric, labels), value in scrape.samples.items()
                if metric == name and all(_matches(dict(labels).get(label, ""), op, text)
                                          for label, op, text in matchers)}


def _matches(value: str, op: str, text: str) -> bool:
    if op == "=":
        return value == text
    if op == "!=":
        return value != text
    hit = re.fullmatch(text, value) is not None
    return hit if op == "=~" else not hit
