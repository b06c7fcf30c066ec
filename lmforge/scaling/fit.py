"""Compute-optimal scaling laws from a set of finished runs, as Hoffmann et al. (2022) fit them.

    lmforge scaling-fit RUNS.jsonl [--budget FLOPS] [--bootstrap 100] [--plots DIR]

Each line of RUNS.jsonl is one run: ``params`` (N, the model's parameters), ``tokens`` (D, the
tokens it trained on) and ``loss`` (its final validation loss, nats/token). A line may name its
IsoFLOP group with ``budget`` (the sweep's nominal FLOPs); without it, runs whose 6·N·D agree
within 15 % form a group. The command prints one JSON object: the fitted ``E``, ``A``, ``B``,
``alpha``, ``beta`` and, for ``--budget`` (default: the largest 6·N·D among the runs), the
compute-optimal ``params`` and ``tokens`` (with 6·N·D = budget) and ``tokens_per_param``, the
same from approach 2, and bootstrap intervals.

Approach 2 (IsoFLOP profiles): for each budget C, a parabola of the loss in log N; its minimum is
N_opt(C), D_opt(C) = C / (6 N_opt). Power laws N_opt = k_N C^a and D_opt = k_D C^b are then
least-squares lines in log-log space (a + b = 1 by construction), through the minima that lie
inside the sizes their budget tried (all of them, when fewer than two do).

Approach 3 (parametric loss): L(N, D) = E + A / N^alpha + B / D^beta, fitted as in the paper
and in the replication of Besiroglu et al. (2024): in log space, log L = LSE(e, a - alpha log N,
b - beta log D) with E = exp(e), A = exp(a), B = exp(b), minimising the Huber loss (delta 1e-3)
of the residuals in log-loss with L-BFGS-B from a grid of initialisations (alpha, beta in
{0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4,500 points), keeping the
best optimum. The grid is evaluated at once; L-BFGS-B starts from the ``starts`` grid points with
the lowest initial objective (0: all 4,500), with the analytic gradient.

The compute-optimal allocation minimises L(N, C / 6N):
N* = G (C/6)^(beta/(alpha+beta)), D* = G^-1 (C/6)^(alpha/(alpha+beta)),
G = (alpha A / (beta B))^(1/(alpha+beta)).

Bootstrap: the runs are resampled with replacement ``bootstrap`` times (approach 2: within each
IsoFLOP group) and refitted (approach 3 from the best ``bootstrap_starts`` grid points and the
full-data optimum); the intervals are the percentiles at ``level``.

numpy and scipy are imported where the fitting happens: the Dagster graph imports this module.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field

from lmforge.errors import InputError

# The published fits. Hoffmann et al. (2022), eq. 10 (approach 3 on their runs); and the
# replication of Besiroglu et al. (2024, "Chinchilla Scaling: A replication attempt", eq. 2)
# refitted on the data read off the paper's figure, whose optimum is ~20 tokens per parameter.
HUBER_DELTA = 1e-3
GRID = {"alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
        "e": (-1.0, -0.5, 0.0, 0.5, 1.0), "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)}
GROUP_TOLERANCE = 0.15  # runs whose 6ND agree within this (in log) share an IsoFLOP group
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta, and the compute-optimal allocation it implies."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        """The predicted loss (floats or numpy arrays)."""
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def G(self) -> float:
        a, b = self.alpha, self.beta
        return (a * self.A / (b * self.B)) ** (1.0 / (a + b))

    def optimal(self, flops: float) -> tuple[float, float]:
        """``(N*, D*)`` minimising L(N, D) with 6 N D = ``flops``."""
        a, b = self.alpha, self.beta
        n = self.G * (flops / 6.0) ** (b / (a + b))
        return n, flops / 6.0 / n

    def optimal_tokens(self, params: float) -> float:
        """The D at which ``params`` parameters are compute-optimal (N* of C = 6 N D is N)."""
        a, b = self.alpha, self.beta
        c6 = (params / self.G) ** ((a + b) / b)
        return c6 / params

    def tokens_per_param(self, flops: float) -> float:
        n, d = self.optimal(flops)
        return d / n

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


HOFFMANN = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BESIROGLU = LossLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


class ScalingFitConfig(BaseModel):
    """How the scaling laws are fitted (the defaults are the paper's choices)."""

    budget: float | None = Field(None, gt=0, description="FLOPs to allocate: the compute-optimal "
                                 "params and tokens are given for this budget (None: the largest "
                                 "6*N*D among the runs)")
    huber_delta: float = Field(HUBER_DELTA, gt=0, description="Huber loss delta on the residuals "
                               "in log-loss (approach 3)")
    starts: int = Field(64, ge=0, description="L-BFGS-B runs, from the grid points with the lowest "
                        "initial objective (0: every one of the 4,500 grid points)")
    bootstrap: int = Field(100, ge=0, description="bootstrap resamples for the intervals (0: none)")
    bootstrap_starts: int = Field(8, ge=1, description="L-BFGS-B starts per bootstrap resample "
                                  "(the best grid points, plus the full-data optimum)")
    level: float = Field(0.95, gt=0, lt=1, description="coverage of the bootstrap intervals")
    seed: int = Field(0, description="seed of the bootstrap resampling")
    plots: str | None = Field(None, description="directory to draw isoflops.png and frontier.png "
                              "into (None: no pictures)")


# ---------------------------------------------------------------------------------------------
# the runs

def _number(path, lineno, row, key, *, required=True) -> float | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}:{lineno}: {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{path}:{lineno}: {key!r} must be a positive finite number, got {value!r}")
    return float(value)


def load_runs(path: str | Path) -> list[dict[str, float]]:
    """The runs of a JSONL file: ``params``, ``tokens``, ``loss`` (and ``budget`` if given);
    a bad line is a one-line :class:`InputError` naming the file and the line."""
    from lmforge.io import iter_jsonl

    runs = []
    for lineno, row in iter_jsonl(path):
        run = {k: _number(path, lineno, row, k) for k in ("params", "tokens", "loss")}
        budget = _number(path, lineno, row, "budget", required=False)
        if budget is None:
            budget = _number(path, lineno, row, "flops", required=False)
        if budget is not None:
            run["budget"] = budget
        runs.append(run)
    check_runs(runs, str(path))
    return runs


def check_runs(runs: list[dict], where: str = "runs") -> None:
    if len(runs) < 5:
        raise InputError(f"{where}: {len(runs)} run(s); the parametric fit has 5 parameters and "
                         "needs at least 5 runs (a sweep has several sizes at several budgets)")
    if len({r["params"] for r in runs}) < 2 or len({r["tokens"] for r in runs}) < 2:
        raise InputError(f"{where}: every run has the same params or the same tokens; the fit "
                         "needs runs that differ in both")


# ---------------------------------------------------------------------------------------------
# approach 3: the parametric fit

def _objective(theta, x, y, logl, delta):
    """Mean Huber loss of log-loss residuals (divided by delta) and its gradient.

    theta = (a, b, e, alpha, beta); predicted log L = LSE(a - alpha x, b - beta y, e)."""
    import numpy as np

    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * x, b - beta * y
    t3 = np.full_like(x, e)
    m = np.maximum(np.maximum(t1, t2), t3)
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    s = w1 + w2 + w3
    r = m + np.log(s) - logl
    quad = np.abs(r) <= delta
    h = np.where(quad, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    dh = np.where(quad, r, delta * np.sign(r))
    scale = 1.0 / (len(x) * delta)
    g1, g2, g3 = dh * w1 / s, dh * w2 / s, dh * w3 / s
    grad = np.array([g1.sum(), g2.sum(), g3.sum(), -(g1 * x).sum(), -(g2 * y).sum()]) * scale
    return float(h.sum() * scale), grad


def _grid_objectives(grid, x, y, logl, delta):
    """The objective at every grid point at once: [points]."""
    import numpy as np

    a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))
    t1, t2 = a - alpha * x[None, :], b - beta * y[None, :]
    t3 = np.broadcast_to(e, t1.shape)
    m = np.maximum(np.maximum(t1, t2), t3)
    r = m + np.log(np.exp(t1 - m) + np.exp(t2 - m) + np.exp(t3 - m)) - logl[None, :]
    ar = np.abs(r)
    h = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))
    return h.sum(axis=1) / (len(x) * delta)


def _grid():
    import itertools

    import numpy as np

    return np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"],
                                           GRID["beta"])), dtype=float)


@dataclass
class ParametricFit:
    law: LossLaw
    objective: float
    converged: bool
    starts: int
    agreeing_starts: int  # starts whose optimum is within 1e-6 (relative) of the best
    theta: Any = None     # (a, b, e, alpha, beta), the optimiser's coordinates

    def to_dict(self) -> dict:
        return {**self.law.to_dict(), "objective": self.objective, "converged": self.converged,
                "starts": self.starts, "agreeing_starts": self.agreeing_starts}


def one_blas_thread():
    """A context with BLAS on one thread: L-BFGS-B's 5x5 linear algebra is ~10x slower when
    OpenBLAS spreads it over busy cores (threadpoolctl, where installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1)


def fit_parametric(params, tokens, loss, *, delta: float = HUBER_DELTA, starts: int = 64,
                   extra_starts: Iterable = ()) -> ParametricFit:
    """Approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta to the runs (see the module doc)."""
    with one_blas_thread():
        return _fit_parametric(params, tokens, loss, delta=delta, starts=starts,
                               extra_starts=extra_starts)


def _fit_parametric(params, tokens, loss, *, delta, starts, extra_starts) -> ParametricFit:
    import numpy as np
    from scipy.optimize import minimize

    x, y = np.log(np.asarray(params, float)), np.log(np.asarray(tokens, float))
    logl = np.log(np.asarray(loss, float))
    grid = _grid()
    values = _grid_objectives(grid, x, y, logl, delta)
    order = np.argsort(values, kind="stable")
    chosen = grid[order if starts <= 0 else order[:starts]]
    extra = [np.asarray(t, float) for t in extra_starts]
    if extra:
        chosen = np.vstack([chosen, *extra])
    results = []
    for theta0 in chosen:
        res = minimize(_objective, theta0, args=(x, y, logl, delta), jac=True, method="L-BFGS-B",
                       options={"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-12,
                                "maxcor": 20})
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
            results.append(res)
    if not results:
        raise InputError("the parametric fit found no finite optimum from any start")
    # The best optimum whose law is a law (positive exponents, finite coefficients); runs that
    # never reach the compute-bound regime can pull the fit to E -> 0 with a negative exponent,
    # which is reported (converged: false), not used. L-BFGS-B's own "success" flag is no guide:
    # it says "ABNORMAL" for line searches at an optimum already met to machine precision.
    sane = [r for r in results if _is_law(r.x)]
    best = min(sane or results, key=lambda r: r.fun)
    agree = sum(1 for r in results if r.fun <= best.fun * (1 + 1e-6) + 1e-15)
    return ParametricFit(law=_law(best.x), objective=float(best.fun), converged=bool(sane),
                         starts=len(chosen), agreeing_starts=agree, theta=best.x)


def _exp(v: float) -> float:
    return math.exp(v) if v < 700 else math.inf


def _law(theta) -> LossLaw:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return LossLaw(E=_exp(e), A=_exp(a), B=_exp(b), alpha=alpha, beta=beta)


def _is_law(theta) -> bool:
    law = _law(theta)
    return law.alpha > 0 and law.beta > 0 and all(map(math.isfinite, law.to_dict().values()))


# ---------------------------------------------------------------------------------------------
# approach 2: IsoFLOP profiles

def isoflop_groups(runs: list[dict], tolerance: float = GROUP_TOLERANCE) -> list[tuple[float, list[dict]]]:
    """``[(budget, runs)]``, by increasing budget: by each run's ``budget`` when every run has one,
    else runs whose 6·N·D agree within ``tolerance`` in log (the group's budget: their geometric
    mean)."""
    if all("budget" in r for r in runs):
        budgets = sorted({r["budget"] for r in runs})
        return [(c, [r for r in runs if r["budget"] == c]) for c in budgets]
    ordered = sorted(runs, key=lambda r: r["params"] * r["tokens"])
    groups: list[list[dict]] = []
    for r in ordered:
        c = math.log(6 * r["params"] * r["tokens"])
        if groups and c - math.log(6 * groups[-1][0]["params"] * groups[-1][0]["tokens"]) <= tolerance:
            groups[-1].append(r)
        else:
            groups.append([r])
    out = []
    for g in groups:
        mean = sum(math.log(6 * r["params"] * r["tokens"]) for r in g) / len(g)
        out.append((math.exp(mean), g))
    return out


def _parabola_minimum(group: list[dict]) -> dict:
    import numpy as np

    xs = np.log([r["params"] for r in group])
    ls = np.array([r["loss"] for r in group])
    if len(set(xs.tolist())) < 3:
        return {"skipped": f"{len(set(xs.tolist()))} distinct model size(s); a parabola needs 3"}
    c2, c1, c0 = np.polyfit(xs, ls, 2)
    if c2 <= 0:
        return {"skipped": "the loss is not convex in log N here (no minimum)"}
    x_opt = -c1 / (2 * c2)
    return {"params_opt": float(math.exp(x_opt)), "loss_min": float(c0 + c1 * x_opt + c2 * x_opt ** 2),
            "interior": bool(xs.min() <= x_opt <= xs.max()), "parabola": [float(c2), float(c1), float(c0)]}


@dataclass
class IsoFlopFit:
    a: float             # N_opt ∝ C^a
    b: float             # D_opt ∝ C^b
    n_coef: float        # N_opt = n_coef * C^a
    d_coef: float
    profiles: list[dict]  # one per IsoFLOP group: budget, runs, params_opt, tokens_opt, ...

    def optimal(self, flops: float) -> tuple[float, float]:
        return self.n_coef * flops ** self.a, self.d_coef * flops ** self.b

    def to_dict(self) -> dict:
        return asdict(self)


def fit_isoflops(runs: list[dict], tolerance: float = GROUP_TOLERANCE) -> IsoFlopFit | None:
    """Approach 2; None when fewer than two IsoFLOP groups have a minimum."""
    import numpy as np

    profiles = []
    for budget, group in isoflop_groups(runs, tolerance):
        p = {"budget": budget, "runs": len(group), **_parabola_minimum(group)}
        if "params_opt" in p:
            p["tokens_opt"] = budget / (6 * p["params_opt"])
        profiles.append(p)
    ok = [p for p in profiles if "params_opt" in p]
    # A minimum outside the sizes a budget tried is the parabola extrapolated: the power law
    # leaves such minima out when at least two budgets have theirs inside.
    if sum(p["interior"] for p in ok) >= 2:
        ok = [p for p in ok if p["interior"]]
    for p in profiles:
        p["used"] = any(p is q for q in ok)
    if len(ok) < 2:
        return None
    lc = np.log([p["budget"] for p in ok])
    a, ln_kn = np.polyfit(lc, np.log([p["params_opt"] for p in ok]), 1)
    b, ln_kd = np.polyfit(lc, np.log([p["tokens_opt"] for p in ok]), 1)
    return IsoFlopFit(a=float(a), b=float(b), n_coef=float(math.exp(ln_kn)),
                      d_coef=float(math.exp(ln_kd)), profiles=profiles)


# ---------------------------------------------------------------------------------------------
# everything together, with bootstrap intervals

def _interval(values, level):
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if len(v) == 0:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _bootstrap(runs, fit: ParametricFit, budget: float, cfg: ScalingFitConfig) -> dict:
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    n = len(runs)
    keys = (*PARAM_NAMES, "params", "tokens", "tokens_per_param")
    samples: dict[str, list] = {k: [] for k in keys}
    iso: dict[str, list] = {"approach2_a": [], "approach2_b": [], "approach2_params": [],
                            "approach2_tokens": []}
    groups = isoflop_groups(runs)
    for _ in range(cfg.bootstrap):
        sample = [runs[i] for i in rng.integers(0, n, n)]
        if len({r["params"] for r in sample}) > 2 and len({r["tokens"] for r in sample}) > 2:
            f = fit_parametric([r["params"] for r in sample], [r["tokens"] for r in sample],
                               [r["loss"] for r in sample], delta=cfg.huber_delta,
                               starts=cfg.bootstrap_starts, extra_starts=[fit.theta])
            if not f.converged:
                continue
            law = f.law
            n_opt, d_opt = law.optimal(budget)
            for k, v in zip(keys, (*law.to_dict().values(), n_opt, d_opt, d_opt / n_opt)):
                samples[k].append(v)
        # approach 2: resample the sizes within each IsoFLOP group, keeping the groups
        resampled = []
        for c, g in groups:
            resampled += [{**g[i], "budget": c} for i in rng.integers(0, len(g), len(g))]
        iso_fit = fit_isoflops(resampled)
        if iso_fit is not None:
            n2, d2 = iso_fit.optimal(budget)
            for k, v in zip(iso, (iso_fit.a, iso_fit.b, n2, d2)):
                iso[k].append(v)
    out = {k: _interval(v, cfg.level) for k, v in {**samples, **iso}.items()}
    out["resamples"] = cfg.bootstrap
    return out


def fit_runs(runs: list[dict], cfg: ScalingFitConfig | None = None) -> dict:
    """Both approaches, the compute-optimal allocation at the budget, and the intervals: the
    JSON the CLI prints and the Dagster asset stores."""
    cfg = cfg or ScalingFitConfig()
    check_runs(runs)
    budget = cfg.budget or max(6 * r["params"] * r["tokens"] for r in runs)
    fit = fit_parametric([r["params"] for r in runs], [r["tokens"] for r in runs],
                         [r["loss"] for r in runs], delta=cfg.huber_delta, starts=cfg.starts)
    if not fit.converged:
        theta = ", ".join(f"{k}={v:.3g}" for k, v in fit.law.to_dict().items())
        raise InputError(f"the parametric fit found no law with positive exponents (best: {theta}): "
                         "the runs never trade parameters for tokens; add smaller models or larger "
                         "budgets, so that each budget has sizes on both sides of its optimum")
    n_opt, d_opt = fit.law.optimal(budget)
    report: dict[str, Any] = {
        **fit.law.to_dict(), "budget": budget, "params": n_opt, "tokens": d_opt,
        "tokens_per_param": d_opt / n_opt, "n_exponent": fit.law.beta / (fit.law.alpha + fit.law.beta),
        "d_exponent": fit.law.alpha / (fit.law.alpha + fit.law.beta),
        "loss_at_optimum": float(fit.law.loss(n_opt, d_opt)), "runs": len(runs),
        "approach3": fit.to_dict(), "huber_delta": cfg.huber_delta,
    }
    iso = fit_isoflops(runs)
    if iso is not None:
        n2, d2 = iso.optimal(budget)
        report["approach2"] = {**iso.to_dict(), "params": n2, "tokens": d2, "tokens_per_param": d2 / n2}
    else:
        report["approach2"] = None
    if cfg.bootstrap:
        with one_blas_thread():
            report["intervals"] = _bootstrap(runs, fit, budget, cfg)
        report["level"] = cfg.level
    if cfg.plots:
        from lmforge.scaling.plots import draw_fit

        report["plots"] = {k: str(v) for k, v in draw_fit(runs, report, cfg.plots).items()}
    return report


def law_from_report(report: dict) -> LossLaw:
    return LossLaw(**{k: float(report[k]) for k in PARAM_NAMES})


def main(argv: list[str] | None = None) -> int:
    from lmforge.config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser(prog="lmforge scaling-fit", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("runs", help="JSONL: one run a line with params, tokens, loss (and budget)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    add_config_arguments(p, ScalingFitConfig)
    args = p.parse_args(argv)
    cfg = config_from_args(ScalingFitConfig, args)
    if args.out:
        from lmforge.io import check_output

        check_output(args.out, "file")
    report = fit_runs(load_runs(args.runs), cfg)
    text = json.dumps(report, indent=2)
    if args.out:
        from lmforge.io import atomic_path

        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    from lmforge.cli import run

    sys.exit(run("scaling-fit", main, sys.argv[1:]))
