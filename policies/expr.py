"""The condition language of policy rules: parsed once into a checked tree, never ``eval``-ed.

A condition such as ``http.latency_p95 > 1.5 * baseline(http.latency_p95)`` is tokenized and
parsed by hand into a tree of frozen dataclasses, type-checked (numbers versus true/false) at
parse time, and evaluated against a :class:`Context` with Kleene three-valued logic: ``None`` is
unknown, and unknown is never treated as true.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, NoReturn, Protocol

from policies.stats import quantile
from policies.units import format_duration, parse_duration

Value = float | bool | None
"""What a condition or sub-expression evaluates to; ``None`` is unknown."""


class ExprError(ValueError):
    """A condition that cannot be parsed or type-checked, with the 1-based column at fault."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"column {column}: {message}")
        self.message = message
        self.column = column

    def __reduce__(self) -> tuple[type[ExprError], tuple[str, int]]:
        # The default pickling replays args (the formatted text) into __init__, which needs two.
        return (ExprError, (self.message, self.column))


@dataclass(frozen=True, slots=True)
class Num:
    """A number literal; ``duration`` only remembers that it was written as ``5m`` for render()."""

    value: float
    duration: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    # Columns say where the text was, not what it means: equal trees may sit at other columns.
    column: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-" or "not"
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    column: int = field(default=0, compare=False)


Expr = Num | Bool | Signal | Unary | Binary | Call


class Context(Protocol):
    """What evaluate() asks about signals; every answer may be ``None`` (unknown)."""

    def value(self, signal: str) -> float | None: ...

    def window(self, signal: str, seconds: float) -> Sequence[float]: ...

    def baseline(self, signal: str) -> float | None: ...

    def changed(self, signal: str) -> bool | None: ...

    def age(self, signal: str) -> float | None: ...


# --- the language's fixed vocabulary ---------------------------------------------------------

_SIGNAL_ARG, _WINDOW_ARG, _Q_ARG = "signal", "window", "q"

FUNCTIONS: Final[dict[str, tuple[str, ...]]] = {
    "baseline": (_SIGNAL_ARG,),
    "avg": (_SIGNAL_ARG, _WINDOW_ARG),
    "max": (_SIGNAL_ARG, _WINDOW_ARG),
    "min": (_SIGNAL_ARG, _WINDOW_ARG),
    "quantile": (_Q_ARG, _SIGNAL_ARG, _WINDOW_ARG),
    "changed": (_SIGNAL_ARG,),
    "age": (_SIGNAL_ARG,),
}
"""Function name to the kinds of its arguments, in order."""

_EXAMPLES: Final = {
    "baseline": "baseline(http.latency_p95)",
    "avg": "avg(http.error_ratio, 5m)",
    "max": "max(http.latency_p95, 5m)",
    "min": "min(http.up, 2m)",
    "quantile": "quantile(0.95, http.latency_p95, 10m)",
    "changed": "changed(migration.version)",
    "age": "age(http.up)",
}
_BOOLEAN_RESULT: Final = frozenset({"changed"})
_WINDOW_FUNCTIONS: Final = frozenset({"avg", "max", "min", "quantile"})

_KEYWORDS: Final = frozenset({"and", "or", "not", "true", "false"})
_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_ARITHMETIC: Final = frozenset({"+", "-", "*", "/"})

# Deeper nesting than any real rule needs; the limits keep parse, evaluate and render far from
# Python's recursion limit whatever text they are given.
_MAX_NESTING: Final = 32
_MAX_DEPTH: Final = 64
MAX_WINDOW: Final = 365 * 86400.0
"""The longest window of avg/max/min/quantile (a year): the engine keeps that much history of
the signal, so the window bounds its memory."""

_PRECEDENCE: Final = {
    "or": 1, "and": 2, "not": 3,
    "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
    "+": 5, "-": 5, "*": 6, "/": 6,
}
_UNARY_MINUS_PRECEDENCE: Final = 7
_ATOM_PRECEDENCE: Final = 8

# --- tokens ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<num>[0-9](?:[0-9]*(?:\.[0-9]+)?[eE][+-][0-9]+)?[A-Za-z0-9_.]*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>==|!=|<=|>=|[<>+\-*/(),])
    """,
    re.VERBOSE | re.ASCII,
)
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+", re.ASCII)
_SIGNAL = re.compile(r"[a-z][a-z0-9_]*(?:\.[A-Za-z0-9_]+)+", re.ASCII)
_HINTS: Final = {
    "=": "'=' is not an operator; compare with '=='",
    "!": "'!' is not an operator; use 'not' (or '!=' to compare)",
    "&": "'&' is not an operator; use 'and'",
    "|": "'|' is not an operator; use 'or'",
}


class _Token(NamedTuple):
    kind: str  # "num", "word", "op", "bad" (a character outside the language) or "end"
    text: str
    column: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            # Reported only when the parser reaches it, so errors come in reading order.
            tokens.append(_Token("bad", text[pos], pos + 1))
            break
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(_Token(kind, match.group(), pos + 1))
        pos = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _describe(token: _Token) -> str:
    return "the end of the condition" if token.kind == "end" else repr(token.text)


# --- parsing and type checking ---------------------------------------------------------------


class _Typed(NamedTuple):
    """A parsed sub-expression with what the checker needs and the tree does not keep."""

    node: Expr
    boolean: bool
    column: int
    depth: int


def _kind(boolean: bool) -> str:
    return "true or false" if boolean else "a number"


class _Parser:
    def __init__(self, text: str, known_signal: Callable[[str], bool]) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.nesting = 0
        self.known_signal = known_signal

    @property
    def token(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind == "bad":
            message = _HINTS.get(token.text, f"unexpected character {token.text!r}")
            raise ExprError(message, token.column)
        return token

    def advance(self) -> _Token:
        token = self.token
        if token.kind != "end":
            self.pos += 1
        return token

    def at(self, text: str) -> bool:
        token = self.token
        return token.kind in ("op", "word") and token.text == text

    def fail(self, message: str, token: _Token | None = None) -> NoReturn:
        raise ExprError(message, (token or self.token).column)

    def enter(self, token: _Token) -> None:
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            self.fail(f"condition nested too deeply (more than {_MAX_NESTING} levels)", token)

    def condition(self) -> Expr:
        if self.token.kind == "end":
            self.fail("empty condition")
        result = self.or_()
        if self.token.kind != "end":
            if self.at(")"):
                self.fail("unexpected ')' without a matching '('")
            self.fail(f"unexpected {_describe(self.token)} after a complete expression; "
                      "expected 'and', 'or' or the end")
        if not result.boolean:
            self.fail("a condition must be true or false; this is a number",
                      self.tokens[0])
        return result.node

    # Each level below parses one row of the precedence table, loosest first.

    def or_(self) -> _Typed:
        left = self.and_()
        while self.at("or"):
            left = self.binary(self.advance(), left, self.and_())
        return left

    def and_(self) -> _Typed:
        left = self.not_()
        while self.at("and"):
            left = self.binary(self.advance(), left, self.not_())
        return left

    def not_(self) -> _Typed:
        if not self.at("not"):
            return self.comparison()
        token = self.advance()
        self.enter(token)
        operand = self.not_()
        self.nesting -= 1
        self.expect(operand, boolean=True, what="'not' needs")
        return self.unary(token, operand, boolean=True)

    def comparison(self) -> _Typed:
        left = self.additive()
        if self.token.kind != "op" or self.token.text not in _COMPARISONS:
            return left
        result = self.binary(self.advance(), left, self.additive())
        if self.token.kind == "op" and self.token.text in _COMPARISONS:
            self.fail("comparisons cannot be chained; combine them with 'and' "
                      "(e.g. a < b and b < c)")
        return result

    def additive(self) -> _Typed:
        left = self.multiplicative()
        while self.at("+") or self.at("-"):
            left = self.binary(self.advance(), left, self.multiplicative())
        return left

    def multiplicative(self) -> _Typed:
        left = self.unary_minus()
        while self.at("*") or self.at("/"):
            left = self.binary(self.advance(), left, self.unary_minus())
        return left

    def unary_minus(self) -> _Typed:
        if not self.at("-"):
            return self.primary()
        token = self.advance()
        self.enter(token)
        operand = self.unary_minus()
        self.nesting -= 1
        self.expect(operand, boolean=False, what="'-' needs")
        return self.unary(token, operand, boolean=False)

    def primary(self) -> _Typed:
        token = self.token
        if token.kind == "num":
            self.advance()
            return _Typed(_number(token), False, token.column, 1)
        if token.kind == "word":
            return self.word()
        if self.at("("):
            return self.parenthesised()
        self.fail(f"expected a number, a signal, a function or '(' but found {_describe(token)}")

    def parenthesised(self) -> _Typed:
        opening = self.advance()
        self.enter(opening)
        inner = self.or_()
        self.close(opening)
        self.nesting -= 1
        # The parentheses leave no node, but errors about this operand point at the '('.
        return inner._replace(column=opening.column)

    def close(self, opening: _Token) -> None:
        if self.at(")"):
            self.advance()
            return
        where = f"the '(' at column {opening.column}"
        if self.token.kind == "end":
            self.fail(f"missing ')' to close {where}")
        self.fail(f"expected ')' to close {where} but found {_describe(self.token)}")

    def word(self) -> _Typed:
        token = self.advance()
        name = token.text
        if name in ("true", "false"):
            return _Typed(Bool(name == "true"), True, token.column, 1)
        if name in _KEYWORDS:
            self.fail(f"expected a number, a signal, a function or '(' but found {name!r}", token)
        if "." in name:
            return _Typed(self.signal(token), False, token.column, 1)
        if self.at("("):
            return self.call(token)
        if name in FUNCTIONS:
            self.fail(f"{name} is a function; call it like {_EXAMPLES[name]}", token)
        hint = f" (did you mean {name.lower()!r}?)" if name.lower() in _KEYWORDS else (
            " (signal names have a dot, e.g. http.error_ratio)")
        self.fail(f"unknown name {name!r}{hint}", token)

    def signal(self, token: _Token) -> Signal:
        name = token.text
        if not _SIGNAL.fullmatch(name):
            self.fail(f"invalid signal name {name!r} (a lowercase first part, then dotted parts, "
                      "e.g. http.error_ratio or alert.HighLatency)", token)
        if not self.known_signal(name):
            self.fail(f"unknown signal {name!r}", token)
        return Signal(name, token.column)

    def call(self, token: _Token) -> _Typed:
        name = token.text
        if name not in FUNCTIONS:
            self.fail(f"unknown function {name}", token)
        opening = self.advance()
        self.enter(opening)
        args: list[_Typed] = []
        if not self.at(")"):
            args.append(self.or_())
            while self.at(","):
                self.advance()
                args.append(self.or_())
        closing = self.token
        self.close(opening)
        self.nesting -= 1
        _check_arguments(name, args, closing)
        node = Call(name, tuple(a.node for a in args), token.column)
        depth = 1 + max(a.depth for a in args)
        return _Typed(node, name in _BOOLEAN_RESULT, token.column, depth)

    def expect(self, operand: _Typed, *, boolean: bool, what: str) -> None:
        if operand.boolean != boolean:
            raise ExprError(f"{what} {_kind(boolean)}; this is {_kind(operand.boolean)}",
                            operand.column)

    def binary(self, token: _Token, left: _Typed, right: _Typed) -> _Typed:
        op = token.text
        boolean_operands = op in ("and", "or")
        if boolean_operands:
            what = f"'{op}' needs"
        elif op in _COMPARISONS:
            what = f"'{op}' compares numbers: it needs"
        else:
            what = f"'{op}' needs"
        self.expect(left, boolean=boolean_operands, what=what)
        self.expect(right, boolean=boolean_operands, what=what)
        depth = 1 + max(left.depth, right.depth)
        if depth > _MAX_DEPTH:
            self.fail(f"condition too long or nested too deeply (more than {_MAX_DEPTH} levels)",
                      token)
        node = Binary(op, left.node, right.node)
        return _Typed(node, op not in _ARITHMETIC, left.column, depth)

    def unary(self, token: _Token, operand: _Typed, *, boolean: bool) -> _Typed:
        depth = operand.depth + 1
        if depth > _MAX_DEPTH:
            self.fail(f"condition nested too deeply (more than {_MAX_DEPTH} levels)", token)
        return _Typed(Unary(token.text, operand.node), boolean, token.column, depth)


def _number(token: _Token) -> Num:
    text = token.text
    if _NUMBER.fullmatch(text):
        value, duration = float(text), False
    elif _DURATION.fullmatch(text):
        try:
            value, duration = parse_duration(text), True
        except ValueError:
            raise ExprError("duration too large", token.column) from None
    else:
        raise ExprError(f"invalid number or duration {text!r} "
                        "(e.g. 0.25, 1e3, 500ms, 5s, 2m, 1h30m)", token.column)
    if not math.isfinite(value):
        raise ExprError(f"number {text!r} is too large", token.column)
    return Num(value, duration)


def _check_arguments(name: str, args: list[_Typed], closing: _Token) -> None:
    kinds = FUNCTIONS[name]
    if len(args) != len(kinds):
        expected = f"{len(kinds)} argument{'s' if len(kinds) > 1 else ''} ({', '.join(kinds)})"
        column = args[len(kinds)].column if len(args) > len(kinds) else closing.column
        raise ExprError(f"{name}() expects {expected}, e.g. {_EXAMPLES[name]}; "
                        f"got {len(args)}", column)
    for position, (kind, arg) in enumerate(zip(kinds, args, strict=True), start=1):
        node = arg.node
        if kind == _SIGNAL_ARG:
            ok = isinstance(node, Signal)
            wanted = "a signal name"
        elif kind == _WINDOW_ARG:
            ok = isinstance(node, Num) and 0 < node.value <= MAX_WINDOW
            wanted = (f"a window: a duration or number of seconds greater than 0 and at most "
                      f"{format_duration(MAX_WINDOW)}")
        else:
            ok = isinstance(node, Num) and not node.duration and 0 <= node.value <= 1
            wanted = "a number between 0 and 1"
        if not ok:
            raise ExprError(f"{name}() expects {wanted} as argument {position}, "
                            f"e.g. {_EXAMPLES[name]}", arg.column)


def parse_condition(text: str, known_signal: Callable[[str], bool] = lambda s: True) -> Expr:
    """The checked tree of a rule's condition, which must be true or false.

    ``known_signal`` says whether a signal name is one that probes or events produce; a name it
    rejects (a typo such as ``http.eror_ratio``) is an error at the name's column.
    """
    return _Parser(text, known_signal).condition()


# --- questions about a tree ------------------------------------------------------------------


def _walk(expr: Expr) -> list[Expr]:
    nodes: list[Expr] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, Unary):
            stack.append(node.operand)
        elif isinstance(node, Binary):
            stack.extend((node.left, node.right))
        elif isinstance(node, Call):
            stack.extend(node.args)
    return nodes


def signals_of(expr: Expr) -> frozenset[str]:
    """Every signal the expression reads, including those inside functions."""
    return frozenset(node.name for node in _walk(expr) if isinstance(node, Signal))


def baseline_signals(expr: Expr) -> frozenset[str]:
    """The signals whose pre-deploy baseline the expression needs."""
    return frozenset(
        arg.name
        for node in _walk(expr)
        if isinstance(node, Call) and node.name == "baseline"
        for arg in node.args
        if isinstance(arg, Signal)
    )


def longest_window(expr: Expr) -> float:
    """The longest history, in seconds, that avg/max/min/quantile look back over (0 if none)."""
    longest = 0.0
    for node in _walk(expr):
        if isinstance(node, Call) and node.name in _WINDOW_FUNCTIONS:
            window = node.args[-1]
            if isinstance(window, Num):
                longest = max(longest, window.value)
    return longest


# --- evaluation ------------------------------------------------------------------------------

_isnan = math.isnan


def _known(value: float | None) -> float | None:
    # NaN is not a measurement; letting it through would make `not (x > 1)` true.
    return None if value is None or value != value else value


def _quantile(q: float, values: Sequence[float]) -> float | None:
    result = quantile(values, q)
    return None if result is None else _known(result)


def _call(expr: Call, ctx: Context) -> Value:
    name, args = expr.name, expr.args
    signal = args[-2] if name in _WINDOW_FUNCTIONS else args[0]
    assert isinstance(signal, Signal)
    if name == "baseline":
        return _known(ctx.baseline(signal.name))
    if name == "changed":
        return ctx.changed(signal.name)
    if name == "age":
        return _known(ctx.age(signal.name))
    window = args[-1]
    assert isinstance(window, Num)
    values = ctx.window(signal.name, window.value)
    if not values or any(map(_isnan, values)):
        return None
    if name == "avg":
        return _known(sum(values) / len(values))
    if name == "max":
        return max(values)
    if name == "min":
        return min(values)
    q = args[0]
    assert isinstance(q, Num)
    return _quantile(q.value, values)


def _arithmetic(op: str, left: float, right: float) -> float | None:
    if op == "+":
        result = left + right
    elif op == "-":
        result = left - right
    elif op == "*":
        result = left * right
    elif right == 0:
        return None
    else:
        result = left / right
    return None if result != result else result


def _compare(op: str, left: float, right: float) -> bool:
    if op == ">":
        return left > right
    if op == "<":
        return left < right
    if op == "==":
        return left == right
    if op == ">=":
        return left >= right
    if op == "<=":
        return left <= right
    return left != right


def evaluate(expr: Expr, ctx: Context) -> Value:
    """The value of a checked tree, unknown (``None``) where the context does not know enough.

    Kleene logic: ``false and x`` is false and ``true or x`` is true even when x is unknown;
    any other combination with an unknown operand is unknown. Never raises for a tree that
    parse_condition() built, whatever numbers or unknowns the context gives.
    """
    if isinstance(expr, Binary):
        op = expr.op
        if op == "and":
            left = evaluate(expr.left, ctx)
            if left is False:
                return False
            right = evaluate(expr.right, ctx)
            if right is False:
                return False
            return None if left is None or right is None else True
        if op == "or":
            left = evaluate(expr.left, ctx)
            if left is True:
                return True
            right = evaluate(expr.right, ctx)
            if right is True:
                return True
            return None if left is None or right is None else False
        left = evaluate(expr.left, ctx)
        if left is None:
            return None
        right = evaluate(expr.right, ctx)
        if right is None:
            return None
        if op in _COMPARISONS:
            return _compare(op, left, right)
        return _arithmetic(op, left, right)
    if isinstance(expr, Signal):
        return _known(ctx.value(expr.name))
    if isinstance(expr, Num | Bool):
        return expr.value
    if isinstance(expr, Call):
        return _call(expr, ctx)
    operand = evaluate(expr.operand, ctx)
    if operand is None:
        return None
    if expr.op == "not":
        return not operand
    return -operand


# --- rendering -------------------------------------------------------------------------------


def _precedence(expr: Expr) -> int:
    if isinstance(expr, Binary):
        return _PRECEDENCE[expr.op]
    if isinstance(expr, Unary):
        return _PRECEDENCE["not"] if expr.op == "not" else _UNARY_MINUS_PRECEDENCE
    return _ATOM_PRECEDENCE


def _render_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _render_num(num: Num) -> str:
    if num.duration:
        text = format_duration(num.value)
        # format_duration rounds to six digits; only use it when it reads back exactly.
        if _DURATION.fullmatch(text) and parse_duration(text) == num.value:
            return text
    text = _render_number(abs(num.value))
    # A literal is never negative when parsed; a built one must still read back as its value.
    return f"(-{text})" if num.value < 0 else text


def _wrap(expr: Expr, parenthesise: bool) -> str:
    text = render(expr)
    return f"({text})" if parenthesise else text


def render(expr: Expr) -> str:
    """Canonical text of a tree, with only the parentheses it needs; it parses back to the same
    tree."""
    if isinstance(expr, Binary):
        precedence = _PRECEDENCE[expr.op]
        # Operators group left to right, so an equal-precedence right operand needs parentheses;
        # comparisons do not chain, so for them the left one does too.
        left_limit = precedence + 1 if expr.op in _COMPARISONS else precedence
        left = _wrap(expr.left, _precedence(expr.left) < left_limit)
        right = _wrap(expr.right, _precedence(expr.right) <= precedence)
        return f"{left} {expr.op} {right}"
    if isinstance(expr, Unary):
        if expr.op == "not":
            return "not " + _wrap(expr.operand, _precedence(expr.operand) < _PRECEDENCE["not"])
        # "-(-x)" rather than "--x", which reads like a typo.
        return "-" + _wrap(expr.operand, _precedence(expr.operand) <= _UNARY_MINUS_PRECEDENCE)
    if isinstance(expr, Num):
        return _render_num(expr)
    if isinstance(expr, Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, Signal):
        return expr.name
    return f"{expr.name}({', '.join(render(arg) for arg in expr.args)})"
