"""The expression task's objective (maximised): ``-min(7, log(1 + MSE))`` against the target
``1/3 + x + sin(x*x)`` on 1,000 evenly spaced points in [-10, 10]; 0 is the optimum (the
target itself), -7 the worst.

The expression is evaluated from an arithmetic parse tree with the usual precedence
(``*`` and ``/`` before ``+``, left to right), exactly as the authors' Python ``eval`` did;
note that this is *not* the grammar's tree, whose operators all share one precedence.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np

from wrjax.tasks.expressions import grammar as G

__all__ = ["DEFAULT_TARGET", "PAPER_TEXT_TARGET", "WORST_LOG_MSE", "evaluate", "score",
           "score_batch"]

#: The benchmark target of Kusner et al., used by the authors' code and in the data file.
DEFAULT_TARGET = "1 / 3 + x + sin( x * x )"
#: The target as printed in the paper's text (a transcription slip; see DESIGN.md).
PAPER_TEXT_TARGET = "1 / 3 * x * sin( x * x )"
#: ``log(1 + MSE)`` is capped here; the score of a failed evaluation.
WORST_LOG_MSE = 7.0


def _arith_tree(tokens: list[str]):
    """Parse tokens with the usual precedence into nested tuples.

    expr := term (('+') term)*;  term := factor (('*' | '/') factor)*;
    factor := 'x' | digit | '(' expr ')' | 'sin(' expr ')' | 'exp(' expr ')'.
    Left-associative, like Python.
    """
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"syntax error at token {pos} of {' '.join(tokens)!r}")
        pos += 1
        return tok

    def expr():
        node = term()
        while peek() == "+":
            take()
            node = ("+", node, term())
        return node

    def term():
        node = factor()
        while peek() in ("*", "/"):
            node = (take(), node, factor())
        return node

    def factor():
        tok = take()
        if tok == "x":
            return ("x",)
        if tok in ("1", "2", "3"):
            return ("num", float(tok))
        if tok in ("(", "sin(", "exp("):
            inner = expr()
            take(")")
            return inner if tok == "(" else (tok[:-1], inner)
        raise ValueError(f"syntax error at token {pos - 1} of {' '.join(tokens)!r}")

    tree = expr()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in {' '.join(tokens)!r}")
    return tree


def _eval_tree(node, x: np.ndarray):
    op = node[0]
    if op == "x":
        return x
    if op == "num":
        return node[1]  # a scalar stays a scalar, as in Python's eval
    if op == "sin":
        return np.sin(_eval_tree(node[1], x))
    if op == "exp":
        return np.exp(_eval_tree(node[1], x))
    a, b = _eval_tree(node[1], x), _eval_tree(node[2], x)
    return a + b if op == "+" else a * b if op == "*" else a / b


@functools.lru_cache(maxsize=1)
def _x_grid() -> np.ndarray:
    x = np.linspace(-10.0, 10.0, 1000)
    x.flags.writeable = False
    return x


def evaluate(expression: str, x: np.ndarray | None = None) -> np.ndarray | float:
    """Evaluate an expression of ``x`` from its arithmetic parse tree (float64 NumPy).

    Args:
      expression: text in the grammar's language (spaces optional).
      x: points (default: 1,000 evenly spaced in [-10, 10]).

    Returns:
      An array like ``x``, or a float for a constant expression. Overflow gives inf or NaN
      (NumPy semantics, no warning).
    """
    x = _x_grid() if x is None else np.asarray(x, np.float64)
    tree = _arith_tree(G.tokenize(expression))
    with np.errstate(all="ignore"):
        return _eval_tree(tree, x)


@functools.lru_cache(maxsize=8)
def _target_values(target: str) -> np.ndarray:
    y = np.broadcast_to(np.asarray(evaluate(target), np.float64), _x_grid().shape).copy()
    if not np.all(np.isfinite(y)):
        raise ValueError(f"target {target!r} is not finite on the grid")
    y.flags.writeable = False
    return y


def score(expression: str, *, target: str = DEFAULT_TARGET) -> float:
    """The objective, higher is better: ``-min(7, log(1 + MSE(expression, target)))``.

    The MSE is over 1,000 evenly spaced points in [-10, 10]. An evaluation that overflows
    (inf) or is undefined (NaN) scores -7, the authors' value for a failed evaluation.

    Args:
      expression: text in the grammar's language, e.g. ``"x + sin( x * x )"``.
      target: the target expression (default: the benchmark's ``1/3 + x + sin(x*x)``).

    Raises:
      ValueError: the text is not an expression of the grammar.

    Example:
      >>> score("1 / 3 + x + sin( x * x )")
      0.0
      >>> round(score("x"), 4)   # -log(1 + mean((1/3 + sin(x^2))^2))
      -0.4876
    """
    y = evaluate(expression)
    with np.errstate(all="ignore"):
        mse = np.mean((y - _target_values(target)) ** 2)
        log_mse = float(np.log(1.0 + mse))
    if math.isnan(log_mse):
        return -WORST_LOG_MSE
    return 0.0 - min(WORST_LOG_MSE, log_mse)  # 0.0 - 0.0 is +0.0, not -0.0


def score_batch(expressions: Iterable[str], *, target: str = DEFAULT_TARGET) -> np.ndarray:
    """:func:`score` of each expression, ``(N,)`` float64."""
    return np.array([score(e, target=target) for e in expressions], np.float64)
