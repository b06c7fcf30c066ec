"""Bradley-Terry ratings: the fit is the maximum-likelihood estimate (checked against its own
optimality conditions and against Chatbot Arena's logistic-regression recipe), recovers known
strengths from synthetic battles, and its bootstrap intervals cover the true values at about
their stated rate; ties, separation and bad inputs behave as documented."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lmforge.align.ratings import (ELO_PER_NAT, bootstrap_ratings, encode, fit_bradley_terry,
                                   online_elo, points_matrix, rate, simulate_battles, to_elo)
from lmforge.errors import InputError

TRUTH = {"a": 1200.0, "b": 1100.0, "c": 1000.0, "d": 950.0, "e": 750.0}  # mean 1000


def battle(a, b, winner):
    return {"model_a": a, "model_b": b, "winner": winner}


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def test_fit_satisfies_the_likelihood_equations():
    # At the maximum-likelihood estimate every model's expected points equal its observed points
    # (the gradient of the log-likelihood is zero): checked on the raw battles, not on the code's
    # own aggregation.
    records = simulate_battles(TRUTH, 1500, seed=4)
    r = rate(records, prior=0.0, rounds=10)
    R = {row.model: row.rating for row in r.leaderboard}
    expected, observed = dict.fromkeys(TRUTH, 0.0), dict.fromkeys(TRUTH, 0.0)
    for x in records:
        p = 1 / (1 + 10 ** ((R[x["model_b"]] - R[x["model_a"]]) / 400))
        expected[x["model_a"]] += p
        expected[x["model_b"]] += 1 - p
        observed[x["model_a" if x["winner"] == "model_a" else "model_b"]] += 1
    for m in TRUTH:
        assert expected[m] == pytest.approx(observed[m], abs=1e-6)
    assert np.mean(list(R.values())) == pytest.approx(1000.0, abs=1e-6)


def test_matches_chatbot_arena_logistic_regression():
    # Chatbot Arena's recipe: logistic regression without intercept on +-ln(10) indicator rows,
    # ties as one win each way (weight 1/2 here), rating = 400 * coef + 1000. With no penalty
    # both are the same estimate, up to the shift (theirs is arbitrary; ours has mean 1000).
    sklearn = pytest.importorskip("sklearn.linear_model")
    records = simulate_battles(TRUTH, 800, seed=7)
    rng = random.Random(0)
    for x in records[:100]:  # some ties too
        if rng.random() < 0.5:
            x["winner"] = "tie"
    names = list(TRUTH)
    X, Y, w = [], [], []
    for x in records:
        row = np.zeros(len(names))
        row[names.index(x["model_a"])] = math.log(10)
        row[names.index(x["model_b"])] = -math.log(10)
        if x["winner"] == "tie":
            X += [row, row]
            Y += [1, 0]
            w += [0.5, 0.5]
        else:
            X.append(row)
            Y.append(1 if x["winner"] == "model_a" else 0)
            w.append(1.0)
    lr = sklearn.LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=10_000)
    lr.fit(np.array(X), np.array(Y), sample_weight=np.array(w))
    theirs = 400 * lr.coef_[0]
    theirs = theirs - theirs.mean() + 1000
    ours = rate(records, prior=0.0, rounds=10)
    for name, value in zip(names, theirs):
        assert ours.row(name).rating == pytest.approx(value, abs=0.05)


def test_recovers_order_and_intervals_cover_the_truth():
    """40 synthetic tournaments (5 models, 2000 battles each). The fit must recover the order,
    and the 95% intervals must cover the true ratings at about 95%.

    The band: 40 trials x 5 models = 200 intervals. Independent 95% intervals would cover
    Binomial(200, 0.95) / 200 = 0.95 +- 0.015 (sd); the ratings of one trial are tied together by
    the mean-1000 constraint, which widens that a little (resampling the trials' coverages gave a
    99.8% range of 0.90 - 0.985). So [0.88, 0.99]: a correct method falls outside with probability
    well under 1%, while intervals half as wide as they should be (coverage ~0.68) or twice as
    wide (~1.0, every one of 200 covering) fail. The 50% intervals, from the same refits, check
    the middle of the distribution: 0.5 +- 0.035, band [0.35, 0.65]."""
    truth = np.array(list(TRUTH.values()))
    cover95, cover50, exact, rho = [], [], 0, []
    for trial in range(40):
        records = simulate_battles(TRUTH, 2000, seed=1000 + trial)
        names, a, b, y = encode(records, models=list(TRUTH))
        beta = fit_bradley_terry(points_matrix(len(names), a, b, y))
        est = to_elo(beta)
        boot = bootstrap_ratings(len(names), a, b, y, rounds=200, seed=trial, init=beta)
        lo95, hi95 = np.quantile(boot, [0.025, 0.975], axis=0)
        lo50, hi50 = np.quantile(boot, [0.25, 0.75], axis=0)
        cover95 += list((lo95 <= truth) & (truth <= hi95))
        cover50 += list((lo50 <= truth) & (truth <= hi50))
        exact += list(np.argsort(-est)) == list(np.argsort(-truth))
        rho.append(spearman(est, truth))
    assert 0.88 <= np.mean(cover95) <= 0.99, np.mean(cover95)
    assert 0.35 <= np.mean(cover50) <= 0.65, np.mean(cover50)
    # The closest pair (c, d) is 50 points apart: ~25 points of standard error per rating
    # difference makes an occasional swap of those two the only expected error.
    assert exact >= 36, exact
    assert min(rho) >= 0.9 - 1e-9, min(rho)  # at worst one swap of neighbours


def test_rate_reports_the_bootstrap_interval_and_is_reproducible():
    records = simulate_battles(TRUTH, 1000, seed=3)
    r1 = rate(records, models=list(TRUTH), rounds=300, seed=5)
    r2 = rate(records, models=list(TRUTH), rounds=300, seed=5)
    assert r1 == r2
    names, a, b, y = encode(records, models=list(TRUTH))
    beta = fit_bradley_terry(points_matrix(len(names), a, b, y))
    boot = bootstrap_ratings(len(names), a, b, y, rounds=300, seed=5, init=beta)
    lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
    for i, m in enumerate(names):
        row = r1.row(m)
        assert (row.ci_low, row.ci_high) == pytest.approx((lo[i], hi[i]))
        assert row.ci_low < row.rating < row.ci_high
    assert r1.models == ["a", "b", "c", "d", "e"]
    assert [row.rank for row in r1.leaderboard][0] == 1
    # Observed win rates are each pair's points per battle, and the matrix is complementary.
    wr = np.array([[np.nan if v is None else v for v in row] for row in r1.win_rate])
    off = ~np.eye(5, dtype=bool)
    assert np.allclose((wr + wr.T)[off], 1.0)
    n_ab = sum(1 for x in records if {x["model_a"], x["model_b"]} == {"a", "b"})
    a_pts = sum(1 for x in records if {x["model_a"], x["model_b"]} == {"a", "b"}
                and x[x["winner"]] == "a")
    assert r1.battle_counts[0][1] == n_ab and wr[0, 1] == pytest.approx(a_pts / n_ab)


def test_order_of_battles_changes_online_elo_but_not_bradley_terry():
    records = simulate_battles(TRUTH, 1000, seed=11)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    bt1, bt2 = rate(records, rounds=10), rate(shuffled, rounds=10)
    for m in TRUTH:
        assert bt1.row(m).rating == pytest.approx(bt2.row(m).rating, abs=1e-6)
    e1, e2 = online_elo(records), online_elo(shuffled)
    assert max(abs(e1[m] - e2[m]) for m in TRUTH) > 1.0
    assert bt1.row("a").online_elo == pytest.approx(e1["a"])


def test_ties_count_half_a_win():
    # a vs b: 3 wins, 1 loss, 2 ties -> a scored 4 of 6 points: odds 2, a gap of 400 log10(2).
    records = ([battle("a", "b", "model_a")] * 3 + [battle("b", "a", "model_a")]
               + [battle("a", "b", "tie"), battle("b", "a", "tie (bothbad)")])
    r = rate(records, prior=0.0, rounds=50)
    assert r.row("a").rating - r.row("b").rating == pytest.approx(400 * math.log10(2), abs=1e-6)
    assert (r.row("a").wins, r.row("a").losses, r.row("a").ties) == (3, 1, 2)
    assert r.row("a").score == pytest.approx(4 / 6) and r.win_rate[0][1] == pytest.approx(4 / 6)
    assert r.predicted_win_rate[0][1] == pytest.approx(4 / 6)
    only_ties = rate([battle("a", "b", "tie"), battle("b", "c", "tie"), battle("c", "a", "tie")],
                     rounds=20)
    assert all(row.rating == pytest.approx(1000.0) for row in only_ties.leaderboard)
    assert not only_ties.separated


def test_anchor_pins_one_model_and_keeps_the_gaps():
    records = simulate_battles(TRUTH, 600, seed=2)
    free, pinned = rate(records, rounds=100), rate(records, rounds=100, anchor="c")
    assert pinned.row("c").rating == pytest.approx(1000.0)
    assert pinned.row("c").ci_low == pytest.approx(1000.0) == pinned.row("c").ci_high
    shift = free.row("c").rating - 1000
    for m in TRUTH:
        assert pinned.row(m).rating == pytest.approx(free.row(m).rating - shift, abs=1e-6)


def test_separation_is_detected_and_reported():
    # a never loses; b and c beat each other: no finite MLE for a's gap.
    records = ([battle("a", "b", "model_a")] * 5 + [battle("c", "a", "model_b")] * 5
               + [battle("b", "c", "model_a")] * 3 + [battle("b", "c", "model_b")] * 2)
    r = rate(records, rounds=100)
    assert r.separated and r.components == [["a"], ["b", "c"]]
    assert r.models[0] == "a" and all(math.isfinite(row.rating) for row in r.leaderboard)
    assert any("separation" in w and "prior" in w for w in r.warnings)
    # b vs c is measured: its gap is their log-odds, 3:2, whatever a's gap is.
    assert r.row("b").rating - r.row("c").rating == pytest.approx(400 * math.log10(1.5), abs=2.0)
    # A weaker prior moves a further up: its gap is the prior's, not the data's.
    assert rate(records, rounds=10, prior=1e-5).row("a").rating > r.row("a").rating + 100
    with pytest.raises(InputError, match="no finite Bradley-Terry estimate.*prior > 0"):
        rate(records, prior=0.0)
    # Two groups that never met are separated too.
    apart = [battle("a", "b", "model_a"), battle("b", "a", "model_a"),
             battle("c", "d", "model_a"), battle("d", "c", "model_a")]
    assert rate(apart, rounds=10).separated


@pytest.mark.parametrize("records, models, message", [
    ([], None, "no battles"),
    ([battle("a", "b", "model_a")], ["a"], "at least 2 models"),
    ([battle("a", "b", "model_a")], ["a", "b", "c"], "no battles: c"),
    ([battle("a", "a", "model_a")], None, "cannot battle itself"),
    ([battle("a", "b", "a")], None, "winner must be one of"),
    ([{"model_a": "a", "winner": "tie"}], None, "'model_b' must be a model name"),
    ([battle("a", "b", "model_a")], ["a", "c"], "not in the list: b"),
])
def test_bad_battles_are_one_line_errors(records, models, message):
    with pytest.raises(InputError, match=message) as e:
        rate(records, models=models)
    assert "\n" not in str(e.value)


def test_bad_settings():
    records = [battle("a", "b", "model_a"), battle("b", "a", "model_a")]
    for kwargs, message in [({"ci": 1.5}, "ci must be"), ({"rounds": 0}, "rounds"),
                            ({"prior": -1}, "prior"), ({"anchor": "z"}, "anchor 'z'")]:
        with pytest.raises(InputError, match=message):
            rate(records, **kwargs)


def test_elo_scale():
    # 400 points = 10:1 odds.
    assert ELO_PER_NAT * math.log(10) == pytest.approx(400.0)
    r = rate([battle("a", "b", "model_a")] * 10 + [battle("a", "b", "model_b")], prior=0.0, rounds=5)
    assert r.row("a").rating - r.row("b").rating == pytest.approx(400.0, abs=1e-6)
