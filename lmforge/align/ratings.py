"""Ratings from pairwise battles: Bradley-Terry maximum likelihood with bootstrap intervals.

A battle is one prompt answered by two models and judged: ``{"model_a", "model_b", "winner"}``
with ``winner`` one of ``model_a``, ``model_b``, ``tie`` (Chatbot Arena's format; ``tie
(bothbad)`` reads as a tie). The Bradley-Terry model gives every model a strength ``beta`` and
says ``P(a beats b) = sigmoid(beta_a - beta_b)``; the ratings are the strengths that make the
observed battles most likely. This is the method Chatbot Arena moved to from online Elo: it does
not depend on the order of the battles, and its uncertainty can be measured.

Choices, as Chatbot Arena makes them:

- **Ties count as half a win for each side** (the likelihood of a battle is
  ``p**y * (1 - p)**(1 - y)`` with ``y = 1, 0.5, 0``). Simple and order-free; it treats a tie as
  evidence that the two are equal, and does not model how often ties happen (Rao-Kupper and
  Davidson do; they give the same ranking when ties are symmetric).
- **Elo scale**: ``rating = 1000 + 400 * beta / ln 10``, so a 400-point gap means 10:1 odds.
- **Identification**: strengths are defined up to a constant. A tiny L2 prior
  (``prior * |beta|^2 / 2``) fixes the mean rating at 1000; ``anchor`` instead pins one model at
  1000. The prior also keeps the estimate finite under **separation** (a model, or a group of
  models, that never lost to the rest: no finite maximum-likelihood estimate exists). That is
  detected exactly (the battle graph is not strongly connected, Ford 1957 / Hunter 2004) and
  reported; the gap it affects is then set by the prior, not by the data.
- **Intervals**: percentile bootstrap over battles (resample the battles with replacement, refit,
  take the quantiles), ``rounds`` times.

The fit is Newton's method on the n x n matrix of points scored (n = models, a handful), so a
thousand bootstrap refits take well under a second. numpy is imported inside the functions: the
Dagster graph imports this module's callers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pydantic import BaseModel, Field

from lmforge.errors import InputError

if TYPE_CHECKING:
    import numpy as np

ELO_BASE = 1000.0
ELO_SCALE = 400.0
ELO_PER_NAT = ELO_SCALE / math.log(10)  # rating points per unit of natural-log odds
DEFAULT_PRIOR = 1e-3

# winner field -> points for model_a
OUTCOMES = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


# ----------------------------------------------------------------------------------------------
# battles


def outcome(record: dict, where: str = "battle") -> float:
    """Points for ``model_a`` in one battle record: 1, 0 or 0.5."""
    winner = record.get("winner")
    if winner not in OUTCOMES:
        raise InputError(f"{where}: winner must be one of {', '.join(map(repr, OUTCOMES))}, "
                         f"not {winner!r}")
    return OUTCOMES[winner]


def winner_from_score(score: float, tie_margin: float = 0.0) -> str:
    """The battle's winner from a judge's value for ``a`` (1 = a wins, 0 = b wins): within
    ``tie_margin`` of 0.5 is a tie."""
    if score > 0.5 + tie_margin:
        return "model_a"
    if score < 0.5 - tie_margin:
        return "model_b"
    return "tie"


def check_battle(record: Any, where: str = "battle") -> None:
    if not isinstance(record, dict):
        raise InputError(f"{where}: a battle must be a JSON object, not {type(record).__name__}")
    for key in ("model_a", "model_b"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise InputError(f"{where}: {key!r} must be a model name (a non-empty string)")
    if record["model_a"] == record["model_b"]:
        raise InputError(f"{where}: a model cannot battle itself ({record['model_a']!r})")
    outcome(record, where)


def read_battles(path: str | Path) -> list[dict]:
    """Battle records from a JSONL file; a bad line is a one-line InputError naming file:line."""
    from lmforge.errors import MissingInputError
    from lmforge.io import iter_jsonl

    if not Path(path).is_file():
        raise MissingInputError(f"no battles file at {path}")
    records = []
    for lineno, record in iter_jsonl(path):
        check_battle(record, f"{path}:{lineno}")
        records.append(record)
    if not records:
        raise InputError(f"{path}: no battles in the file")
    return records


def encode(records: Sequence[dict], models: Sequence[str] | None = None):
    """``(models, a, b, y)``: model names and, per battle, the index of each side and the
    points of ``a``. ``models`` fixes the order (every one must have battled); by default the
    names in order of first appearance."""
    import numpy as np

    for i, r in enumerate(records):
        check_battle(r, f"battle {i}")
    names = list(models) if models is not None else list(dict.fromkeys(
        n for r in records for n in (r["model_a"], r["model_b"])))
    if len(set(names)) != len(names):
        raise InputError(f"model names must be unique: {names}")
    if len(names) < 2:
        raise InputError(f"ratings need at least 2 models, got {len(names)} ({', '.join(names)})")
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for r in records for n in (r["model_a"], r["model_b"])} - set(index))
    if unknown:
        raise InputError(f"battles name model(s) not in the list: {', '.join(unknown)}")
    a = np.array([index[r["model_a"]] for r in records], dtype=np.int64)
    b = np.array([index[r["model_b"]] for r in records], dtype=np.int64)
    y = np.array([outcome(r) for r in records], dtype=np.float64)
    played = np.bincount(a, minlength=len(names)) + np.bincount(b, minlength=len(names))
    idle = [n for n, k in zip(names, played) if k == 0]
    if idle:
        raise InputError(f"model(s) with no battles: {', '.join(idle)} (a rating needs at least one)")
    return names, a, b, y


def points_matrix(n: int, a, b, y, weights=None):
    """``W[i, j]``: the points model i scored against model j (a tie is half a point each)."""
    import numpy as np

    w = np.ones_like(y) if weights is None else weights
    flat = (np.bincount(a * n + b, weights=w * y, minlength=n * n)
            + np.bincount(b * n + a, weights=w * (1.0 - y), minlength=n * n))
    return flat.reshape(n, n)


# ----------------------------------------------------------------------------------------------
# the fit


def components(W) -> list[list[int]]:
    """The strongly connected components of the "scored against" graph (an edge i -> j when i
    scored any point against j), strongest first. One component <=> a finite MLE exists."""
    import numpy as np

    n = W.shape[0]
    reach = (W > 0) | np.eye(n, dtype=bool)
    while True:  # transitive closure by squaring; n is a handful
        nxt = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
        if (nxt == reach).all():
            break
        reach = nxt
    comps: list[list[int]] = []
    seen: set[int] = set()
    for i in range(n):
        if i in seen:
            continue
        comp = [j for j in range(n) if reach[i, j] and reach[j, i]]
        seen.update(comp)
        comps.append(comp)
    # A component above another reaches it; order by how many models each reaches.
    comps.sort(key=lambda c: -int(reach[c[0]].sum()))
    return comps


def fit_bradley_terry(W, prior: float = DEFAULT_PRIOR, init=None, tol: float = 1e-10,
                      max_iter: int = 200):
    """Strengths ``beta`` (natural-log odds, mean 0) maximising the Bradley-Terry likelihood of
    the points matrix ``W`` minus ``prior * |beta|^2 / 2``. Newton's method with a backtracking
    line search: the objective is concave, so it converges from anywhere."""
    import numpy as np

    n = W.shape[0]
    N = W + W.T
    beta = np.zeros(n) if init is None else np.array(init, dtype=np.float64)
    # The translation-invariant direction has no curvature without a prior: a tiny ridge keeps
    # the Newton system solvable, and beta is centred after each step.
    ridge = max(prior, 1e-9)

    def objective(bt):
        d = bt[:, None] - bt[None, :]
        # -log sigmoid(d) = log1p(exp(-d)), stably
        return float((W * np.logaddexp(0.0, -d)).sum() + 0.5 * prior * (bt @ bt))

    f = objective(beta)
    for _ in range(max_iter):
        d = beta[:, None] - beta[None, :]
        p = 1.0 / (1.0 + np.exp(-d))
        grad = -(W - N * p).sum(axis=1) + prior * beta
        c = N * p * (1.0 - p)
        H = -c
        H[np.diag_indices(n)] = c.sum(axis=1) - np.diag(c) + ridge
        step = np.linalg.solve(H, grad)
        t = 1.0
        while True:
            cand = beta - t * step
            cand -= cand.mean()
            fc = objective(cand)
            if fc <= f + 1e-12 * max(1.0, abs(f)) or t < 1e-8:
                break
            t *= 0.5
        beta, f = cand, fc
        if np.abs(t * step).max() < tol or t < 1e-8:
            break
    return beta - beta.mean()


def to_elo(beta, anchor: int | None = None):
    """Ratings on Chatbot Arena's scale: 1000 + 400 * beta / ln 10, with the mean (or the
    ``anchor`` model) at 1000."""
    shift = beta[..., [anchor]] if anchor is not None else 0.0
    return ELO_BASE + ELO_PER_NAT * (beta - shift)


def bootstrap_ratings(n: int, a, b, y, *, rounds: int = 1000, seed: int = 0,
                      prior: float = DEFAULT_PRIOR, anchor: int | None = None, init=None):
    """``rounds x n`` ratings, each fitted on the battles resampled with replacement.

    Resampling the battles is a multinomial draw over the distinct battle kinds (pair and
    outcome), so a round costs a fit on an n x n matrix whatever the number of battles."""
    import numpy as np

    keys = np.stack([a, b, y], axis=1)
    kinds, counts = np.unique(keys, axis=0, return_counts=True)
    ka, kb, ky = kinds[:, 0].astype(np.int64), kinds[:, 1].astype(np.int64), kinds[:, 2]
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(y), counts / counts.sum(), size=rounds)
    out = np.empty((rounds, n))
    for r in range(rounds):
        W = points_matrix(n, ka, kb, ky, weights=draws[r].astype(np.float64))
        out[r] = to_elo(fit_bradley_terry(W, prior=prior, init=init), anchor)
    return out


def online_elo(records: Iterable[dict], k: float = 4.0, models: Sequence[str] = ()) -> dict[str, float]:
    """Online Elo in battle order (Chatbot Arena's original method, K=4 by default): each battle
    moves both ratings by K times (result - expected). Depends on the order; for comparison."""
    rating: dict[str, float] = {m: ELO_BASE for m in models}
    for r in records:
        ra, rb = rating.setdefault(r["model_a"], ELO_BASE), rating.setdefault(r["model_b"], ELO_BASE)
        expected = 1.0 / (1.0 + 10 ** ((rb - ra) / ELO_SCALE))
        delta = k * (outcome(r) - expected)
        rating[r["model_a"]] = ra + delta
        rating[r["model_b"]] = rb - delta
    return rating


# ----------------------------------------------------------------------------------------------
# the leaderboard


class LeaderboardRow(BaseModel):
    rank: int = Field(description="1 + the number of models whose interval lies wholly above "
                      "this one's (Chatbot Arena's rank: ties in rank are not separable)")
    model: str = Field(description="the contestant's name")
    rating: float = Field(description="Bradley-Terry maximum-likelihood rating, Elo scale")
    ci_low: float = Field(description="lower end of the bootstrap percentile interval")
    ci_high: float = Field(description="upper end of the bootstrap percentile interval")
    battles: int = Field(description="battles this model fought")
    wins: int = Field(description="battles won")
    losses: int = Field(description="battles lost")
    ties: int = Field(description="battles tied")
    score: float = Field(description="points per battle (wins + ties/2) / battles")
    online_elo: float = Field(description="online Elo (K=4, battle order), for comparison")


class Ratings(BaseModel):
    """Everything ``rate`` measured; JSON-serialisable as ``ratings.json``."""

    models: list[str] = Field(description="model names, in leaderboard order (best first)")
    leaderboard: list[LeaderboardRow] = Field(description="one row per model, best first")
    win_rate: list[list[float | None]] = Field(
        description="win_rate[i][j]: points per battle of models[i] against models[j] "
        "(ties half); None where the two never met")
    predicted_win_rate: list[list[float]] = Field(
        description="the same from the fitted ratings: 1 / (1 + 10^((R_j - R_i) / 400))")
    battle_counts: list[list[int]] = Field(description="battles between models[i] and models[j]")
    num_battles: int = Field(description="battles rated")
    ci: float = Field(description="the intervals' nominal coverage")
    bootstrap_rounds: int = Field(description="bootstrap refits behind the intervals")
    prior: float = Field(description="L2 prior strength on the natural-log-odds strengths")
    anchor: str | None = Field(description="model pinned at 1000, or None (mean at 1000)")
    ties: str = Field(default="half", description="how ties count: half a win for each side")
    separated: bool = Field(description="no finite maximum-likelihood estimate: some models never "
                            "lost to the rest; their gap is set by the prior")
    components: list[list[str]] = Field(
        description="groups of models the battles connect both ways, strongest first (one group "
        "when the maximum-likelihood estimate exists)")
    warnings: list[str] = Field(default_factory=list, description="what to read with care")

    def row(self, model: str) -> LeaderboardRow:
        return next(r for r in self.leaderboard if r.model == model)

    def to_markdown(self) -> str:
        pct = round(self.ci * 100)
        lines = [f"| rank | model | rating | {pct}% CI | battles | W / L / T | score | online Elo |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.leaderboard:
            lines.append(f"| {r.rank} | {r.model} | {r.rating:.0f} | {r.ci_low:.0f} – {r.ci_high:.0f}"
                         f" | {r.battles} | {r.wins} / {r.losses} / {r.ties} | {r.score:.3f}"
                         f" | {r.online_elo:.0f} |")
        return "\n".join(lines)

    def win_rate_markdown(self) -> str:
        head = "| vs | " + " | ".join(self.models) + " |"
        lines = [head, "| --- |" + " --- |" * len(self.models)]
        for m, row in zip(self.models, self.win_rate):
            cells = ["–" if v is None else f"{v:.2f}" for v in row]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def rate(records: Sequence[dict], *, models: Sequence[str] | None = None, rounds: int = 1000,
         ci: float = 0.95, prior: float = DEFAULT_PRIOR, anchor: str | None = None,
         seed: int = 0, elo_k: float = 4.0) -> Ratings:
    """Bradley-Terry ratings of the battles, with bootstrap intervals, win rates and online Elo.

    ``models`` fixes the set (each must have battled); by default every model the battles name.
    Raises InputError for fewer than 2 models, a model with no battles, a bad record, or
    ``prior=0`` under separation (no finite estimate to report)."""
    import numpy as np

    if not 0 < ci < 1:
        raise InputError(f"ci must be between 0 and 1 (e.g. 0.95), not {ci}")
    if rounds < 1:
        raise InputError(f"bootstrap rounds must be at least 1, not {rounds}")
    if prior < 0:
        raise InputError(f"prior must be >= 0, not {prior}")
    if not records:
        raise InputError("no battles to rate")
    names, a, b, y = encode(records, models)
    n = len(names)
    if anchor is not None and anchor not in names:
        raise InputError(f"anchor {anchor!r} is not one of the models: {', '.join(names)}")
    anchor_i = names.index(anchor) if anchor is not None else None

    W = points_matrix(n, a, b, y)
    comps = components(W)
    separated = len(comps) > 1
    warnings: list[str] = []
    if separated:
        if prior == 0:
            raise InputError(
                "no finite Bradley-Terry estimate: " + _separation_text(comps, names)
                + "; set prior > 0 to rate them anyway")
        warnings.append("separation: " + _separation_text(comps, names) + f"; the gaps between "
                        f"these groups are set by the prior ({prior:g}), not measured")
    beta = fit_bradley_terry(W, prior=prior)
    rating = to_elo(beta, anchor_i)
    boot = bootstrap_ratings(n, a, b, y, rounds=rounds, seed=seed, prior=prior, anchor=anchor_i,
                             init=beta)
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    elo = online_elo(records, k=elo_k, models=names)

    N = W + W.T
    wins = np.bincount(a, weights=(y == 1), minlength=n) + np.bincount(b, weights=(y == 0), minlength=n)
    losses = np.bincount(a, weights=(y == 0), minlength=n) + np.bincount(b, weights=(y == 1), minlength=n)
    ties = np.bincount(a, weights=(y == 0.5), minlength=n) + np.bincount(b, weights=(y == 0.5), minlength=n)
    played = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
    if (played < 5).any():
        few = [names[i] for i in range(n) if played[i] < 5]
        warnings.append(f"few battles for {', '.join(few)}: their intervals are rough")

    order = sorted(range(n), key=lambda i: -rating[i])
    rows = []
    for i in order:
        above = sum(1 for j in range(n) if j != i and lo[j] > hi[i])
        rows.append(LeaderboardRow(
            rank=1 + above, model=names[i], rating=float(rating[i]), ci_low=float(lo[i]),
            ci_high=float(hi[i]), battles=int(played[i]), wins=int(wins[i]), losses=int(losses[i]),
            ties=int(ties[i]), score=float(W[i].sum() / played[i]), online_elo=float(elo[names[i]])))
    pred = 1.0 / (1.0 + 10 ** ((rating[None, :] - rating[:, None]) / ELO_SCALE))
    win_rate = [[None if i == j or N[i, j] == 0 else float(W[i, j] / N[i, j]) for j in order]
                for i in order]
    return Ratings(
        models=[names[i] for i in order], leaderboard=rows, win_rate=win_rate,
        predicted_win_rate=[[float(pred[i, j]) for j in order] for i in order],
        battle_counts=[[int(N[i, j]) for j in order] for i in order], num_battles=len(y), ci=ci,
        bootstrap_rounds=rounds, prior=prior, anchor=anchor, separated=separated,
        components=[[names[i] for i in c] for c in comps], warnings=warnings)


def _separation_text(comps: list[list[int]], names: list[str]) -> str:
    groups = [" + ".join(names[i] for i in c) for c in comps]
    return ("the battles do not connect every model both ways (" + " > ".join(groups)
            + ": each group never lost to the ones after it, or never met them)")


# ----------------------------------------------------------------------------------------------
# synthetic battles (tests and benchmarks)


def simulate_battles(ratings: dict[str, float], n: int, seed: int = 0) -> list[dict]:
    """``n`` battles between uniformly drawn pairs, decided by the Bradley-Terry model with the
    given Elo-scale ratings (no ties)."""
    import numpy as np

    names = list(ratings)
    r = np.array([ratings[m] for m in names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(names), n)
    j = (i + rng.integers(1, len(names), n)) % len(names)
    p = 1.0 / (1.0 + 10 ** ((r[j] - r[i]) / ELO_SCALE))
    won = rng.random(n) < p
    return [{"model_a": names[x], "model_b": names[z], "winner": "model_a" if w else "model_b"}
            for x, z, w in zip(i.tolist(), j.tolist(), won.tolist())]
