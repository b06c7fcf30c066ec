"""How well do the arena's Bradley-Terry ratings recover known strengths, against online Elo?

    .venv/bin/python benchmarks/arena_ratings.py [--models 8 --gap 40 --trials 30]

Synthetic tournaments: ``--models`` models ``--gap`` Elo points apart (mean 1000), battles
between uniformly drawn pairs decided by the Bradley-Terry model itself. For each number of
battles, over ``--trials`` seeds: the Spearman rank correlation of the estimate with the truth,
the RMS error of the ratings in Elo points, and, for Bradley-Terry, how often its 95% bootstrap
intervals cover the truth. Online Elo is what Chatbot Arena used before (K=4, in battle order),
and chess's K=32 is shown too. Ratio = online Elo's RMS error / Bradley-Terry's (above 1: the
maximum-likelihood fit is closer to the truth).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lmforge.align.ratings import online_elo, rate, simulate_battles


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--gap", type=float, default=40.0, help="Elo points between neighbours")
    p.add_argument("--battles", type=int, nargs="+", default=[200, 1000, 5000])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--rounds", type=int, default=200, help="bootstrap rounds per fit")
    args = p.parse_args(argv)

    names = [f"m{i}" for i in range(args.models)]
    truth = {m: 1000 + args.gap * ((args.models - 1) / 2 - i) for i, m in enumerate(names)}
    t = np.array([truth[m] for m in names])
    print(f"{args.models} models {args.gap:g} Elo apart, {args.trials} trials per row, "
          f"95% intervals from {args.rounds} bootstrap rounds\n")
    header = (f"{'battles':>8} | {'method':<22} | {'spearman':>8} | {'RMSE (Elo)':>10} | "
              f"{'95% coverage':>12} | {'s/fit':>6}")
    print(header)
    print("-" * len(header))
    for n in args.battles:
        res: dict[str, dict[str, list[float]]] = {}
        for trial in range(args.trials):
            records = simulate_battles(truth, n, seed=trial)
            start = time.perf_counter()
            r = rate(records, models=names, rounds=args.rounds, seed=trial)
            fit_s = time.perf_counter() - start
            bt = np.array([r.row(m).rating for m in names])
            lo = np.array([r.row(m).ci_low for m in names])
            hi = np.array([r.row(m).ci_high for m in names])
            row = res.setdefault("Bradley-Terry MLE", {"rho": [], "rmse": [], "cover": [], "s": []})
            row["rho"].append(spearman(bt, t))
            row["rmse"].append(float(np.sqrt(np.mean((bt - t) ** 2))))
            row["cover"].append(float(np.mean((lo <= t) & (t <= hi))))
            row["s"].append(fit_s)
            for k in (4.0, 32.0):
                start = time.perf_counter()
                elo = online_elo(records, k=k, models=names)
                el = np.array([elo[m] for m in names])
                row = res.setdefault(f"online Elo K={k:g}", {"rho": [], "rmse": [], "cover": [], "s": []})
                row["rho"].append(spearman(el, t))
                row["rmse"].append(float(np.sqrt(np.mean((el - t) ** 2))))
                row["s"].append(time.perf_counter() - start)
        bt_rmse = np.mean(res["Bradley-Terry MLE"]["rmse"])
        for method, row in res.items():
            cover = f"{np.mean(row['cover']):.3f}" if row["cover"] else "–"
            ratio = "" if method.startswith("Bradley") else f"  ratio {np.mean(row['rmse']) / bt_rmse:.2f}x"
            print(f"{n:>8} | {method:<22} | {np.mean(row['rho']):>8.3f} | {np.mean(row['rmse']):>10.1f} | "
                  f"{cover:>12} | {np.mean(row['s']):>6.3f}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
