"""Online comparison of two rankers by interleaving their result lists.

Each impression shows one list merged from ranker A's and ranker B's; the user's clicks give
credit to A or B, and the per-impression outcomes ("A", "B", "tie") add up to a sign test.

* **Team draft** (Radlinski, Kurup & Joachims, CIKM 2008): in each round a coin flip decides
  which team picks first, then each team adds its highest-ranked document not shown yet. A
  click credits the team that contributed the clicked position.
* **Balanced** (Joachims 2003): one coin flip decides which ranker leads for the whole list;
  the list alternates between the two rankers' next unshown documents, the leader taking the
  turn while both pointers are level. Credit (as Chapelle et al., TOIS 2012, state it): with
  ``d`` the clicked document lowest in the shown list, ``k = min(rank of d in A, rank of d in
  B)`` (1-based, a document a list lacks ranks beyond its end); each ranker gets the clicks on
  documents in its own top ``k``.

Both rankers' lists are cut to ``k`` after dropping later duplicates, so a document deep in one
list is never shown; the shown list has no duplicates and at most ``k`` documents. When one
list runs out the other fills the remaining positions.

>>> il = team_draft(["d1", "d2", "d3"], ["d2", "d4", "d1"], k=4, rng=random.Random(7))
>>> il.docs, il.teams
(('d1', 'd2', 'd3', 'd4'), ('A', 'B', 'A', 'B'))
>>> credit(il, [1, 3]), outcome(il, [1, 3]), outcome(il, [0, 1])
((0, 2), 'B', 'tie')
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "Comparison",
    "Interleaving",
    "Method",
    "Outcome",
    "Team",
    "all_interleavings",
    "balanced",
    "compare",
    "credit",
    "interleave",
    "outcome",
    "sign_test",
    "team_draft",
]

Team = Literal["A", "B"]
Outcome = Literal["A", "B", "tie"]
Method = Literal["team_draft", "balanced"]
METHODS: tuple[Method, ...] = get_args(Method)
ALPHA = 0.05


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of document ids, got {type(value).__name__}")
    for i, doc in enumerate(value):
        if not isinstance(doc, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(doc).__name__}")
    return tuple(value)


def _no_duplicates(docs: tuple[str, ...], name: str) -> None:
    seen: set[str] = set()
    for doc in docs:
        if doc in seen:
            raise ValueError(f"{name} has duplicate document {doc!r}")
        seen.add(doc)


@dataclass(frozen=True)
class Interleaving:
    """One interleaved list as shown, with what is needed to credit its clicks later.

    ``a`` and ``b`` are the two rankers' lists as used: later duplicates dropped, cut to
    ``k``. ``teams[i]`` is the team that contributed ``docs[i]`` (team draft) or ``None``
    (balanced, whose credit depends only on ``a`` and ``b``). The constructor validates, so an
    instance read back with :meth:`from_dict` is as sound as one just made.
    """

    method: Method
    docs: tuple[str, ...]
    teams: tuple[Team | None, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("docs", "a", "b"):
            docs = _str_tuple(getattr(self, name), name)
            _no_duplicates(docs, name)
            object.__setattr__(self, name, docs)  # lists are accepted and stored as tuples
        if isinstance(self.teams, list):
            object.__setattr__(self, "teams", tuple(self.teams))
        if not isinstance(self.teams, tuple):
            raise ValueError(f"teams must be a list, got {type(self.teams).__name__}")
        if len(self.teams) != len(self.docs):
            raise ValueError(f"teams has {len(self.teams)} entries for {len(self.docs)} docs")
        in_a, in_b = set(self.a), set(self.b)
        for i, (doc, team) in enumerate(zip(self.docs, self.teams, strict=True)):
            if self.method == "balanced":
                if team is not None:
                    raise ValueError(f"teams[{i}] must be None for balanced, got {team!r}")
                if doc not in in_a and doc not in in_b:
                    raise ValueError(f"docs[{i}] {doc!r} is in neither a nor b")
            elif team not in ("A", "B"):
                raise ValueError(f"teams[{i}] must be 'A' or 'B' for team_draft, got {team!r}")
            elif doc not in (in_a if team == "A" else in_b):
                raise ValueError(f"docs[{i}] {doc!r} is credited to team {team}, not in its list")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists and strings; a balanced list's teams are ``null``)."""
        return {
            "method": self.method,
            "docs": list(self.docs),
            "teams": list(self.teams),
            "a": list(self.a),
            "b": list(self.b),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interleaving:
        """Read back :meth:`to_dict`'s output; raises ``ValueError`` naming what is wrong.

        >>> il = balanced(["x", "y"], ["y", "z"], k=3, rng=random.Random(0))
        >>> Interleaving.from_dict(il.to_dict()) == il
        True
        >>> Interleaving.from_dict({"method": "team_draft", "docs": ["x"], "teams": ["C"],
        ...                         "a": ["x"], "b": []})
        Traceback (most recent call last):
        ...
        ValueError: teams[0] must be 'A' or 'B' for team_draft, got 'C'
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"an interleaving must be a mapping, got {type(d).__name__}")
        missing = [f for f in ("method", "docs", "teams", "a", "b") if f not in d]
        if missing:
            raise ValueError(f"interleaving lacks {', '.join(missing)}")
        return cls(method=d["method"], docs=d["docs"], teams=d["teams"], a=d["a"], b=d["b"])


def _prepare(a: Sequence[str], b: Sequence[str], k: int) -> tuple[tuple[str, ...], ...]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    out = []
    for name, ranking in (("a", a), ("b", b)):
        docs = _str_tuple(ranking if isinstance(ranking, (str, tuple)) else list(ranking), name)
        out.append(tuple(dict.fromkeys(docs))[:k])  # first occurrence wins, order kept
    return out[0], out[1]


# A coin source yields True for "A first". The enumeration in all_interleavings drives the
# same code with both outcomes of every flip, so the two cannot disagree.
Coins = Iterator[bool]


def _rng_coins(rng: random.Random | None) -> Coins:
    r = rng if rng is not None else random.Random()
    while True:
        yield r.random() < 0.5


def _team_draft(a: tuple[str, ...], b: tuple[str, ...], k: int, coins: Coins) -> Interleaving:
    docs: list[str] = []
    teams: list[Team | None] = []
    shown: set[str] = set()
    ia = ib = 0

    def pick(team: Team) -> None:
        nonlocal ia, ib
        ranking, i = (a, ia) if team == "A" else (b, ib)
        while ranking[i] in shown:
            i += 1
        docs.append(ranking[i])
        teams.append(team)
        shown.add(ranking[i])
        if team == "A":
            ia = i + 1
        else:
            ib = i + 1

    def left(ranking: tuple[str, ...], i: int) -> bool:
        return any(d not in shown for d in ranking[i:])

    while len(docs) < k:
        has_a, has_b = left(a, ia), left(b, ib)
        if not (has_a or has_b):
            break
        if has_a and has_b:
            first: Team = "A" if next(coins) else "B"
            pick(first)
            second: Team = "B" if first == "A" else "A"
            if len(docs) < k and left(*((a, ia) if second == "A" else (b, ib))):
                pick(second)
        else:
            pick("A" if has_a else "B")  # the other list is used up: no coin to flip
    return Interleaving("team_draft", tuple(docs), tuple(teams), a, b)


def _balanced(a: tuple[str, ...], b: tuple[str, ...], k: int, coins: Coins) -> Interleaving:
    a_first = next(coins) if a and b else bool(a)
    docs: list[str] = []
    shown: set[str] = set()
    ka = kb = 0
    while len(docs) < k and (ka < len(a) or kb < len(b)):
        take_a = kb >= len(b) or (ka < len(a) and (ka < kb or (ka == kb and a_first)))
        doc = a[ka] if take_a else b[kb]
        if take_a:
            ka += 1
        else:
            kb += 1
        if doc not in shown:
            docs.append(doc)
            shown.add(doc)
    return Interleaving("balanced", tuple(docs), (None,) * len(docs), a, b)


def team_draft(
    a: Sequence[str], b: Sequence[str], k: int = 10, *, rng: random.Random | None = None
) -> Interleaving:
    """Team-draft interleaving of ranker A's list ``a`` and B's list ``b``, at most ``k`` long.

    >>> il = team_draft(["a1", "a2"], ["b1", "b2"], k=4, rng=random.Random(1))
    >>> sorted(il.docs[:2]) == ["a1", "b1"] and il.teams.count("A") == 2
    True
    """
    pa, pb = _prepare(a, b, k)
    return _team_draft(pa, pb, k, _rng_coins(rng))


def balanced(
    a: Sequence[str], b: Sequence[str], k: int = 10, *, rng: random.Random | None = None
) -> Interleaving:
    """Balanced interleaving of ``a`` and ``b``, at most ``k`` long.

    >>> balanced(["a1", "x", "a3"], ["x", "b2"], k=4, rng=random.Random(0)).docs
    ('x', 'a1', 'b2', 'a3')
    """
    pa, pb = _prepare(a, b, k)
    return _balanced(pa, pb, k, _rng_coins(rng))


def interleave(
    method: str,
    a: Sequence[str],
    b: Sequence[str],
    k: int = 10,
    *,
    rng: random.Random | None = None,
) -> Interleaving:
    """:func:`team_draft` or :func:`balanced` by name; an unknown name raises ``ValueError``.

    >>> interleave("balanced", ["x"], ["x"], k=1).docs
    ('x',)
    """
    if method == "team_draft":
        return team_draft(a, b, k, rng=rng)
    if method == "balanced":
        return balanced(a, b, k, rng=rng)
    raise ValueError(f"unknown interleaving method {method!r}; expected one of {METHODS}")


def all_interleavings(
    method: str, a: Sequence[str], b: Sequence[str], k: int = 10
) -> list[tuple[float, Interleaving]]:
    """Every list ``interleave(method, a, b, k)`` can return, with its probability.

    Explores both outcomes of every coin flip; equal lists are merged, so the probabilities
    sum to 1. The simulator uses it to draw interleavings without running the merge per
    impression.

    >>> [(p, il.docs) for p, il in all_interleavings("balanced", ["x", "y"], ["y", "x"], 2)]
    [(0.5, ('x', 'y')), (0.5, ('y', 'x'))]
    """
    if method not in METHODS:
        raise ValueError(f"unknown interleaving method {method!r}; expected one of {METHODS}")
    pa, pb = _prepare(a, b, k)
    run = _team_draft if method == "team_draft" else _balanced
    found: dict[Interleaving, float] = {}
    prefixes: list[tuple[bool, ...]] = [()]
    while prefixes:
        prefix = prefixes.pop()
        try:
            il = run(pa, pb, k, _replay(prefix))
        except _NeedCoin:
            prefixes += [(*prefix, True), (*prefix, False)]
            continue
        found[il] = found.get(il, 0.0) + 0.5 ** len(prefix)
    pairs = [(p, il) for il, p in found.items()]
    return sorted(pairs, key=lambda pi: (-pi[0], pi[1].docs, str(pi[1].teams)))


class _NeedCoin(Exception):
    """The replayed coin prefix ran out: branch on the next flip."""


def _replay(prefix: tuple[bool, ...]) -> Coins:
    yield from prefix
    raise _NeedCoin


def _positions(il: Interleaving, clicked: Iterable[int]) -> set[int]:
    out: set[int] = set()
    for c in clicked:
        if isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"a clicked position must be an int, got {c!r}")
        if not 0 <= c < len(il.docs):
            raise ValueError(f"clicked position {c} is outside the {len(il.docs)} shown")
        out.add(c)
    return out


def credit(il: Interleaving, clicked: Iterable[int]) -> tuple[int, int]:
    """``(credit_a, credit_b)`` for the clicks at 0-based positions ``clicked`` in ``il.docs``.

    A position clicked twice counts once. Team draft: clicks on each team's documents.
    Balanced: clicks within each ranker's top ``k``, ``k`` set by the lowest click.

    >>> il = Interleaving("balanced", ("a", "b", "c"), (None,) * 3, ("a", "c"), ("b", "a"))
    >>> credit(il, [1]), credit(il, [0, 2])
    ((0, 1), (2, 1))
    """
    pos = _positions(il, clicked)
    if not pos:
        return 0, 0
    if il.method == "team_draft":
        n_a = sum(1 for p in pos if il.teams[p] == "A")
        return n_a, len(pos) - n_a
    lowest = il.docs[max(pos)]
    rank_a = {d: r for r, d in enumerate(il.a, 1)}
    rank_b = {d: r for r, d in enumerate(il.b, 1)}
    beyond = len(il.docs) + len(il.a) + len(il.b) + 1
    cut = min(rank_a.get(lowest, beyond), rank_b.get(lowest, beyond))
    top_a, top_b = set(il.a[:cut]), set(il.b[:cut])
    docs = [il.docs[p] for p in pos]
    return sum(d in top_a for d in docs), sum(d in top_b for d in docs)


def outcome(il: Interleaving, clicked: Iterable[int]) -> Outcome:
    """The ranker with more credit for ``clicked``, "A" or "B"; "tie" if equal or no clicks.

    >>> il = team_draft(["x", "y"], ["z"], k=3, rng=random.Random(3))
    >>> outcome(il, []), outcome(il, [il.teams.index("B")])
    ('tie', 'B')
    """
    ca, cb = credit(il, clicked)
    return "A" if ca > cb else "B" if cb > ca else "tie"


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial (sign test) p-value of ``wins_a`` vs ``wins_b``, ties left out.

    Needs scipy (the ``eval`` extra); p is 1.0 when neither ranker has a win.

    >>> round(sign_test(9, 1), 4), sign_test(0, 0)
    (0.0215, 1.0)
    """
    for name, v in (("wins_a", wins_a), ("wins_b", wins_b)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    # Imported here so that interleaving and crediting work where scipy (an `eval` extra,
    # not a core dependency) is absent.
    from scipy.stats import binomtest

    return float(binomtest(wins_a, n, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class Comparison:
    """Many impressions' outcomes added up, with the sign test's p-value.

    >>> c = compare(["A"] * 9 + ["B"] + ["tie"] * 5)
    >>> c.wins_a, c.wins_b, c.ties, c.winner, round(c.delta, 3)
    (9, 1, 5, 'A', 0.533)
    """

    wins_a: int
    wins_b: int
    ties: int
    p_value: float

    def __post_init__(self) -> None:
        if min(self.wins_a, self.wins_b, self.ties) < 0:
            raise ValueError("counts must be non-negative")
        if not 0.0 <= self.p_value <= 1.0:
            raise ValueError(f"p_value must be in [0, 1], got {self.p_value}")

    @property
    def impressions(self) -> int:
        return self.wins_a + self.wins_b + self.ties

    @property
    def delta(self) -> float:
        """(wins_a - wins_b) / impressions, in [-1, 1]: > 0 favours A (0 with no impressions)."""
        n = self.impressions
        return (self.wins_a - self.wins_b) / n if n else 0.0

    @property
    def winner(self) -> Outcome | None:
        """The better ranker, "A" or "B", once the sign test gives p < 0.05; else ``None``."""
        if self.p_value >= ALPHA or self.wins_a == self.wins_b:
            return None
        return "A" if self.wins_a > self.wins_b else "B"


def compare(outcomes: Iterable[Outcome]) -> Comparison:
    """Count outcomes ("A", "B", "tie") and sign-test them; anything else raises ``ValueError``.

    >>> compare(["A", "tie", "B"]).winner is None
    True
    """
    counts = {"A": 0, "B": 0, "tie": 0}
    for o in outcomes:
        if o not in counts:
            raise ValueError(f"an outcome must be 'A', 'B' or 'tie', got {o!r}")
        counts[o] += 1
    wa, wb = counts["A"], counts["B"]
    return Comparison(wa, wb, counts["tie"], sign_test(wa, wb))
