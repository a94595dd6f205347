"""Context-free grammars for grammar VAEs (Kusner, Paige & Hernández-Lobato, ICML 2017), and
the grammar of the arithmetic expressions.

A sequence is represented by the rules of its *leftmost derivation* (the pre-order list of
the productions of its parse tree), padded to a fixed length with a padding rule
(``Nothing -> None`` in Kusner et al.). The machinery is grammar-independent:

* :class:`Grammar`: productions, non-terminals, and the NumPy tables derived from them;
  build one from ``(lhs, rhs)`` pairs or from nltk-style text (:meth:`Grammar.from_string`).
* :func:`parse`: tokens -> leftmost-derivation rule indices (an Earley parser, so left-
  recursive grammars such as ``S -> S '+' T`` work); :func:`one_hot`; :func:`rules_to_tokens`.
* :class:`GrammarTables` and the JAX side: :func:`masked_decode` /
  :func:`masked_argmax_decode`, the stack-based masked decoding of Kusner et al. as a pure
  ``lax.scan`` over steps with a fixed-size stack array; :func:`sequence_masks` and
  :func:`make_grammar_log_likelihood`, the training-time mask along the true sequence.

Masked decoding keeps a stack of non-terminals, starting from the start symbol. At each step
it pops the top non-terminal ``A`` (or the padding non-terminal if the stack is empty) and
chooses among the rules whose left-hand side is ``A`` only; the chosen rule's right-hand-side
non-terminals are pushed in reverse, so the leftmost is expanded next. The emitted sequence
is therefore always a prefix of a leftmost derivation; it is *complete* when the stack is
empty after the last step.

The last section is the expression task's grammar: :data:`GRAMMAR` (rule order = the columns
of Kusner et al.'s one-hot data), :data:`TABLES`, :func:`tokenize`, :func:`parse_rules`,
:func:`expressions_to_one_hot` and :func:`rules_to_expression`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Production",
    "Grammar",
    "GrammarTables",
    "DecodeResult",
    "parse",
    "one_hot",
    "rules_to_tokens",
    "check_derivation",
    "masked_decode",
    "masked_argmax_decode",
    "sequence_masks",
    "make_grammar_log_likelihood",
    "GRAMMAR",
    "TABLES",
    "MAX_LEN",
    "NUM_RULES",
    "tokenize",
    "parse_rules",
    "expressions_to_one_hot",
    "rules_to_expression",
]

_F32 = jnp.float32


class Production(NamedTuple):
    """One rule ``lhs -> rhs``; ``rhs`` mixes terminals and non-terminals (see ``Grammar``)."""

    lhs: str
    rhs: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.lhs} -> {' '.join(self.rhs) if self.rhs else 'None'}"


@dataclasses.dataclass(frozen=True, eq=False)
class Grammar:
    """A context-free grammar with a padding rule, and the tables derived from it.

    A symbol is a non-terminal iff it is the left-hand side of some production; every other
    right-hand-side symbol is a terminal (a token). The padding rule has an empty right-hand
    side and a left-hand side of its own; it pads sequences and is what masked decoding must
    choose once the stack is empty.

    Attributes:
      productions: the rules, indexed 0..R-1 in the given order.
      start: the start non-terminal (default: the first rule's left-hand side).
      padding_rule: index of the padding rule.
      nonterminals: left-hand sides in order of first appearance (index = non-terminal id).
      rule_lhs: ``(R,)`` int32, non-terminal id of each rule's left-hand side.
      masks: ``(A, R)`` bool, ``masks[a, r]`` iff rule ``r`` rewrites non-terminal ``a``.
      rhs_nonterminals: ``(R, M)`` int32 non-terminal ids of each right-hand side, left to
        right, padded with -1 (``M`` = the most non-terminals in one right-hand side).
      rhs_count: ``(R,)`` int32 number of non-terminals in each right-hand side.
    """

    productions: tuple[Production, ...]
    start: str
    padding_rule: int
    nonterminals: tuple[str, ...] = dataclasses.field(init=False)
    rule_lhs: np.ndarray = dataclasses.field(init=False)
    masks: np.ndarray = dataclasses.field(init=False)
    rhs_nonterminals: np.ndarray = dataclasses.field(init=False)
    rhs_count: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self):
        prods = self.productions
        if not prods:
            raise ValueError("a grammar needs at least one production")
        if not 0 <= self.padding_rule < len(prods):
            raise ValueError(f"padding_rule {self.padding_rule} out of range 0..{len(prods) - 1}")
        nts: list[str] = []
        for p in prods:
            if p.lhs not in nts:
                nts.append(p.lhs)
        if self.start not in nts:
            raise ValueError(f"start symbol {self.start!r} has no production")
        pad = prods[self.padding_rule]
        if pad.rhs:
            raise ValueError(f"the padding rule must have an empty right-hand side, got {pad}")
        if any(p.lhs == pad.lhs for i, p in enumerate(prods) if i != self.padding_rule):
            raise ValueError(f"the padding non-terminal {pad.lhs!r} must have only one rule")
        if pad.lhs == self.start:
            raise ValueError("the padding non-terminal cannot be the start symbol")
        for i, p in enumerate(prods):
            # The Earley parser below has no support for nullable rules; no grammar-VAE
            # grammar (equations, SMILES) needs them.
            if i != self.padding_rule and not p.rhs:
                raise ValueError(f"rule {i} ({p}) has an empty right-hand side")
        index = {a: i for i, a in enumerate(nts)}
        rhs_nt = [[index[s] for s in p.rhs if s in index] for p in prods]
        width = max(1, max(len(r) for r in rhs_nt))
        table = np.full((len(prods), width), -1, np.int32)
        for i, r in enumerate(rhs_nt):
            table[i, : len(r)] = r
        rule_lhs = np.array([index[p.lhs] for p in prods], np.int32)
        masks = rule_lhs[None, :] == np.arange(len(nts))[:, None]
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("nonterminals", tuple(nts))
        set_("rule_lhs", rule_lhs)
        set_("masks", masks)
        set_("rhs_nonterminals", table)
        set_("rhs_count", np.array([len(r) for r in rhs_nt], np.int32))

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_productions(
        cls,
        productions: Sequence[tuple[str, Sequence[str]]],
        *,
        start: str | None = None,
        padding_rule: int | None = None,
    ) -> "Grammar":
        """Build a grammar from ``(lhs, rhs)`` pairs.

        Args:
          productions: ``(lhs, rhs)`` with ``rhs`` a sequence of symbols; exactly one rule
            (the padding rule) has an empty ``rhs``.
          start: the start symbol (default: the first rule's left-hand side).
          padding_rule: index of the padding rule (default: the unique empty rule).
        """
        prods = tuple(Production(str(lhs), tuple(str(s) for s in rhs)) for lhs, rhs in productions)
        if padding_rule is None:
            empty = [i for i, p in enumerate(prods) if not p.rhs]
            if len(empty) != 1:
                raise ValueError(f"need exactly one empty (padding) rule, found {len(empty)}")
            padding_rule = empty[0]
        return cls(prods, start if start is not None else prods[0].lhs, padding_rule)

    @classmethod
    def from_string(cls, text: str, *, start: str | None = None) -> "Grammar":
        """Parse nltk-style rules, one ``LHS -> alt | alt`` per line.

        Terminals are quoted (``'+'``), non-terminals bare; a right-hand side of ``None`` is
        the padding rule (Kusner et al. write ``Nothing -> None``). Blank lines and ``#``
        comments are skipped.

        Example:
          >>> g = Grammar.from_string("S -> S '+' T | T\\nT -> 'x'\\nNothing -> None")
          >>> [str(p) for p in g.productions]
          ['S -> S + T', 'S -> T', 'T -> x', 'Nothing -> None']
        """
        prods: list[tuple[str, list[str]]] = []
        token = re.compile(r"'([^']*)'|\"([^\"]*)\"|(\S+)")
        for line_no, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "->" not in line:
                raise ValueError(f"line {line_no}: expected 'LHS -> RHS', got {line!r}")
            lhs, rhs_text = (s.strip() for s in line.split("->", 1))
            for alt in _split_alternatives(rhs_text):
                symbols = []
                for m in token.finditer(alt):
                    quoted = m.group(1) if m.group(1) is not None else m.group(2)
                    symbols.append(quoted if quoted is not None else m.group(3))
                if symbols == ["None"]:
                    symbols = []
                prods.append((lhs, symbols))
        return cls.from_productions(prods, start=start)

    # -- derived quantities -----------------------------------------------------------------

    @property
    def num_rules(self) -> int:
        return len(self.productions)

    @property
    def padding_nonterminal(self) -> int:
        return int(self.rule_lhs[self.padding_rule])

    @property
    def start_nonterminal(self) -> int:
        return self.nonterminals.index(self.start)

    def is_nonterminal(self, symbol: str) -> bool:
        return symbol in self.nonterminals

    def tables(self) -> "GrammarTables":
        """The JAX arrays that masked decoding and the training-time mask need."""
        return GrammarTables(
            masks=jnp.asarray(self.masks),
            rule_lhs=jnp.asarray(self.rule_lhs),
            rhs_nonterminals=jnp.asarray(self.rhs_nonterminals),
            rhs_count=jnp.asarray(self.rhs_count),
            start=jnp.asarray(self.start_nonterminal, jnp.int32),
            padding=jnp.asarray(self.padding_nonterminal, jnp.int32),
        )

    def __repr__(self) -> str:
        return f"Grammar({len(self.productions)} rules, start={self.start!r})"


def _split_alternatives(text: str) -> list[str]:
    """Split ``a | b`` on bars outside quotes (a quoted ``'|'`` is a terminal)."""
    alts, cur, quote = [], [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "|":
            alts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    alts.append("".join(cur))
    return alts


# ---------------------------------------------------------------------------------------------
# Host side: parsing and printing
# ---------------------------------------------------------------------------------------------


def parse(grammar: Grammar, tokens: Sequence[str]) -> list[int]:
    """The leftmost-derivation rule indices of ``tokens`` (pre-order of the parse tree).

    An Earley parser (Earley 1970), so left recursion is fine. For an ambiguous grammar
    the first parse found is returned (deterministically); grammar-VAE grammars are
    unambiguous. The padding rule is never used.

    Args:
      grammar: the grammar.
      tokens: the terminal symbols, e.g. ``['x', '+', '1']``.

    Returns:
      Rule indices, unpadded (``len`` = number of internal nodes of the parse tree).

    Raises:
      ValueError: when ``tokens`` is not in the language of the grammar.

    Example:
      >>> g = Grammar.from_string("S -> S '+' T | T\\nT -> 'x' | '1'\\nNothing -> None")
      >>> parse(g, ['x', '+', '1'])
      [0, 1, 2, 3]
    """
    prods = grammar.productions
    n = len(tokens)
    by_lhs: dict[str, list[int]] = {}
    for i, p in enumerate(prods):
        if i != grammar.padding_rule:
            by_lhs.setdefault(p.lhs, []).append(i)
    # An item is (rule, dot, origin); chart[k] holds the items ending at position k.
    # back[(rule, dot, origin, k)] = (previous item key, child) records how the item was
    # first reached: child is None after scanning a terminal, or the key of the completed
    # item of the non-terminal just passed. First found wins, so ambiguity resolves
    # deterministically.
    chart: list[list[tuple[int, int, int]]] = [[] for _ in range(n + 1)]
    seen: list[set] = [set() for _ in range(n + 1)]
    back: dict[tuple, tuple] = {}

    def add(k, item, prev=None, child=None):
        if item not in seen[k]:
            seen[k].add(item)
            chart[k].append(item)
            if prev is not None:
                back[(*item, k)] = (prev, child)

    for r in by_lhs.get(grammar.start, []):
        add(0, (r, 0, 0))
    for k in range(n + 1):
        j = 0
        while j < len(chart[k]):  # chart[k] grows while we walk it
            r, dot, origin = chart[k][j]
            j += 1
            rhs = prods[r].rhs
            if dot < len(rhs):
                sym = rhs[dot]
                if sym in by_lhs:  # predict
                    for r2 in by_lhs[sym]:
                        add(k, (r2, 0, k))
                    # A non-terminal completed earlier at k (only possible for nullable
                    # rules, excluded above), so nothing more to do here.
                elif k < n and tokens[k] == sym:  # scan
                    add(k + 1, (r, dot + 1, origin), prev=(r, dot, origin, k), child=None)
            else:  # complete
                lhs = prods[r].lhs
                for r2, dot2, origin2 in list(chart[origin]):
                    rhs2 = prods[r2].rhs
                    if dot2 < len(rhs2) and rhs2[dot2] == lhs:
                        add(
                            k,
                            (r2, dot2 + 1, origin2),
                            prev=(r2, dot2, origin2, origin),
                            child=(r, dot, origin, k),
                        )
    final = next(
        (
            (r, dot, 0, n)
            for r, dot, origin in chart[n]
            if origin == 0 and prods[r].lhs == grammar.start and dot == len(prods[r].rhs)
        ),
        None,
    )
    if final is None:
        raise ValueError(f"not in the language of the grammar: {' '.join(tokens)!r}")

    out: list[int] = []

    def emit(key):
        # Walk the back-pointers of a completed item right to left, collecting children;
        # then emit the rule and recurse into the children left to right (pre-order).
        r = key[0]
        children = []
        cur = key
        while cur[1] > 0:
            prev, child = back[cur]
            if child is not None:
                children.append(child)
            cur = prev
        out.append(r)
        for child in reversed(children):
            emit(child)

    emit(final)
    return out


def one_hot(grammar: Grammar, rules: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """One-hot encode rule sequences, padded with the padding rule to ``max_len``.

    Args:
      rules: ``N`` sequences of rule indices (each at most ``max_len`` long).

    Returns:
      ``(N, max_len, R)`` float32, exactly one 1 per step.
    """
    out = np.zeros((len(rules), max_len, grammar.num_rules), np.float32)
    idx = np.full((len(rules), max_len), grammar.padding_rule, np.int64)
    for i, seq in enumerate(rules):
        if len(seq) > max_len:
            raise ValueError(f"sequence {i} has {len(seq)} rules, more than max_len={max_len}")
        idx[i, : len(seq)] = seq
    np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
    return out


def check_derivation(grammar: Grammar, rules: Sequence[int]) -> tuple[bool, bool]:
    """Check a (padded) rule sequence by expanding it; an independent reference for decoding.

    Returns:
      ``(grammatical, complete)``: ``grammatical`` iff every rule rewrites the leftmost
      unexpanded non-terminal (the padding rule only once none is left) and no real rule
      follows padding; ``complete`` iff, in addition, no non-terminal is left at the end.
    """
    pending = [grammar.start]  # unexpanded non-terminals, leftmost last
    for r in rules:
        r = int(r)
        if not 0 <= r < grammar.num_rules:
            return False, False
        if r == grammar.padding_rule:
            if pending:
                return False, False
            continue
        if not pending or grammar.productions[r].lhs != pending[-1]:
            return False, False
        pending.pop()
        pending.extend(s for s in reversed(grammar.productions[r].rhs) if grammar.is_nonterminal(s))
    return True, not pending


def rules_to_tokens(grammar: Grammar, rules: Sequence[int]) -> list[str] | None:
    """The terminal string of a leftmost derivation, or ``None`` if it is incomplete.

    Padding rules are skipped; the sequence must be a complete, grammatical derivation.

    Example:
      >>> g = Grammar.from_string("S -> S '+' T | T\\nT -> 'x' | '1'\\nNothing -> None")
      >>> rules_to_tokens(g, [0, 1, 2, 3, 4, 4])
      ['x', '+', '1']
      >>> rules_to_tokens(g, [0, 1, 2, 4]) is None
      True
    """
    ok, complete = check_derivation(grammar, rules)
    if not (ok and complete):
        return None
    it = iter(int(r) for r in rules if int(r) != grammar.padding_rule)
    out: list[str] = []
    # Iterative pre-order expansion (explicit stack: sequences may be long, e.g. SMILES).
    stack: list[str] = [grammar.start]
    while stack:
        sym = stack.pop()
        if grammar.is_nonterminal(sym):
            stack.extend(reversed(grammar.productions[next(it)].rhs))
        else:
            out.append(sym)
    return out


# ---------------------------------------------------------------------------------------------
# JAX side: masked decoding and the training-time mask
# ---------------------------------------------------------------------------------------------


class GrammarTables(NamedTuple):
    """The grammar as device arrays (a pytree: pass it to jitted functions as an argument)."""

    masks: jax.Array  # (A, R) bool: rule r rewrites non-terminal a
    rule_lhs: jax.Array  # (R,) int32 non-terminal id of each rule's left-hand side
    rhs_nonterminals: jax.Array  # (R, M) int32 right-hand-side non-terminals, -1 padded
    rhs_count: jax.Array  # (R,) int32
    start: jax.Array  # () int32 start non-terminal
    padding: jax.Array  # () int32 padding non-terminal (what an empty stack yields)


class DecodeResult(NamedTuple):
    """Output of masked decoding."""

    rules: jax.Array  # (..., T) int32 chosen rules
    complete: jax.Array  # (...) bool: the derivation finished within T steps


def _decode_one(scores: jax.Array, tables: GrammarTables) -> DecodeResult:
    """Masked decoding of one sequence from per-step rule scores ``(T, R)``."""
    num_steps = scores.shape[0]
    width = tables.rhs_nonterminals.shape[1]
    # Each step pops one non-terminal, so a stack deeper than the steps left can never be
    # emptied: capacity T + 1 suffices to tell complete from incomplete. Pushes past it are
    # dropped and flagged (the sequence is then incomplete anyway).
    capacity = num_steps + 1
    lowest = jnp.finfo(_F32).min
    highest = jnp.finfo(_F32).max

    def step(carry, s_t):
        stack, size, overflow = carry
        top = jnp.where(size > 0, stack[jnp.maximum(size - 1, 0)], tables.padding)
        size = jnp.maximum(size - 1, 0)
        allowed = tables.masks[top]
        # Finite scores on allowed rules and -inf elsewhere: argmax is always an allowed
        # rule, even for NaN or infinite scores (every non-terminal has at least one rule).
        s_t = jnp.nan_to_num(s_t.astype(_F32), nan=lowest, posinf=highest, neginf=lowest)
        rule = jnp.argmax(jnp.where(allowed, s_t, -jnp.inf)).astype(jnp.int32)
        count = tables.rhs_count[rule]
        # Push right-hand-side non-terminals in reverse: symbol j goes to size + count-1-j,
        # so the leftmost one ends on top. Slots j >= count write out of bounds (dropped).
        j = jnp.arange(width)
        pos = jnp.where(j < count, size + count - 1 - j, capacity)
        stack = stack.at[pos].set(tables.rhs_nonterminals[rule], mode="drop")
        overflow = overflow | (size + count > capacity)
        size = jnp.minimum(size + count, capacity)
        return (stack, size, overflow), rule

    stack0 = jnp.zeros((capacity,), jnp.int32).at[0].set(tables.start)
    carry0 = (stack0, jnp.ones((), jnp.int32), jnp.zeros((), bool))
    (_, size, overflow), rules = jax.lax.scan(step, carry0, scores)
    return DecodeResult(rules, (size == 0) & ~overflow)


def masked_decode(key: jax.Array, logits: jax.Array, tables: GrammarTables) -> DecodeResult:
    """Sample rule sequences with the grammar mask (Kusner et al., Algorithm 1).

    At each step the rule is drawn from ``softmax(logits_t)`` restricted to the rules of the
    non-terminal popped from the stack (Gumbel-max sampling), so every output is a prefix of
    a leftmost derivation whatever the logits.

    Args:
      key: PRNG key.
      logits: ``(B, T, R)`` unnormalised rule scores from the decoder.
      tables: from :meth:`Grammar.tables`.

    Returns:
      :class:`DecodeResult` with ``rules (B, T)`` int32 and ``complete (B,)`` bool.
    """
    gumbel = jax.random.gumbel(key, logits.shape, _F32)
    return jax.vmap(_decode_one, in_axes=(0, None))(logits.astype(_F32) + gumbel, tables)


def masked_argmax_decode(logits: jax.Array, tables: GrammarTables) -> DecodeResult:
    """Greedy masked decoding: the most probable allowed rule at each step.

    Same shapes as :func:`masked_decode`; deterministic.
    """
    return jax.vmap(_decode_one, in_axes=(0, None))(logits.astype(_F32), tables)


def sequence_masks(targets: jax.Array, tables: GrammarTables) -> jax.Array:
    """Training-time masks along the true sequence (Kusner et al.'s ``conditional``).

    At step ``t`` of the true leftmost derivation the non-terminal being rewritten is the
    left-hand side of the true rule, so the allowed rules are those sharing it.

    Args:
      targets: ``(B, T)`` int rule indices or ``(B, T, R)`` one-hot.

    Returns:
      ``(B, T, R)`` bool.
    """
    if targets.ndim == 3:
        targets = jnp.argmax(targets, axis=-1)
    return tables.masks[tables.rule_lhs[targets]]


def make_grammar_log_likelihood(
    tables: GrammarTables, *, kind: str = "bce", eps: float = 1e-7
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A likelihood ``(logits (B, T, R), x (B, T, R) one-hot) -> (B,)`` for ``wrjax.vae``.

    Both kinds first apply the mask of :func:`sequence_masks`, i.e. a softmax over the rules
    allowed at each true step.

    * ``"bce"`` (Kusner et al.'s Keras loss, the authors' default): binary cross-entropy of
      every entry of the masked softmax ``p`` (clipped to ``[eps, 1 - eps]`` as Keras does)
      against the one-hot target, scaled by ``T / (T R)``: Keras's
      ``max_length * mean(binary_crossentropy)``, i.e. ``sum BCE / R``. Returns its negative.
    * ``"categorical"``: ``sum_t log p_t(x_t)``, the exact masked categorical log-likelihood
      in nats (padding steps contribute 0, their only allowed rule having probability 1).

    With ``kind="bce"``, ``beta = 1 / latent_dim`` in ``make_train_step`` reproduces the
    authors' per-example loss ``15 x masked BCE + KL averaged over latent dims``.
    """
    if kind not in ("bce", "categorical"):
        raise ValueError(f"kind must be 'bce' or 'categorical', got {kind!r}")

    def log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
        if logits.shape != x.shape or logits.ndim != 3:
            raise ValueError(f"logits {logits.shape} and x {x.shape} must both be (B, T, R)")
        x = x.astype(_F32)
        mask = sequence_masks(x, tables)
        masked = jnp.where(mask, logits.astype(_F32), -jnp.inf)
        if kind == "categorical":
            logp = jax.nn.log_softmax(masked, axis=-1)
            return jnp.sum(jnp.where(x > 0, logp, 0.0), axis=(1, 2))
        p = jnp.clip(jax.nn.softmax(masked, axis=-1), eps, 1.0 - eps)
        bce = -(x * jnp.log(p) + (1.0 - x) * jnp.log1p(-p))
        return -jnp.sum(bce, axis=(1, 2)) / x.shape[-1]

    return log_likelihood


# ---------------------------------------------------------------------------------------------
# The grammar of the arithmetic expressions
# ---------------------------------------------------------------------------------------------

# Rule order = the columns of Kusner et al.'s one-hot data (eq2_grammar_dataset.h5).
GRAMMAR = Grammar.from_string(
    """
    S -> S '+' T
    S -> S '*' T
    S -> S '/' T
    S -> T
    T -> '(' S ')'
    T -> 'sin(' S ')'
    T -> 'exp(' S ')'
    T -> 'x'
    T -> '1'
    T -> '2'
    T -> '3'
    Nothing -> None
    """
)
TABLES = GRAMMAR.tables()
MAX_LEN = 15
NUM_RULES = GRAMMAR.num_rules  # 12

_TOKEN = re.compile(r"\s*(sin\(|exp\(|[x123+*/()])")


def tokenize(expression: str) -> list[str]:
    """Split an expression into grammar terminals; spaces are optional.

    >>> tokenize("1/3+sin(x*x)")
    ['1', '/', '3', '+', 'sin(', 'x', '*', 'x', ')']
    """
    tokens, pos, text = [], 0, expression.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos:].lstrip()[:1]!r} in {expression!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_rules(expression: str) -> list[int]:
    """The leftmost-derivation rule indices of an expression (unpadded)."""
    return parse(GRAMMAR, tokenize(expression))


def expressions_to_one_hot(expressions: Sequence[str]) -> np.ndarray:
    """``(N, 15, 12)`` float32 one-hot rule sequences, padded with rule 11.

    Raises ``ValueError`` for text outside the grammar or needing more than 15 rules.
    """
    return one_hot(GRAMMAR, [parse_rules(e) for e in expressions], MAX_LEN)


def rules_to_expression(rules: Sequence[int]) -> str | None:
    """The expression (tokens joined by single spaces, as in the data file) of a complete
    rule sequence, or ``None`` if the derivation is incomplete or ungrammatical."""
    tokens = rules_to_tokens(GRAMMAR, rules)
    return None if tokens is None else " ".join(tokens)
