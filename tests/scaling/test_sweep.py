"""The sweep: plans (D = C / 6N in whole steps, N counted as the engine counts it), the sweep file's
errors, and a real micro sweep on CPU through the pretraining engine, resumed and fitted."""

from __future__ import annotations

import json
import math
import time

import pytest

from lmforge.errors import InputError
from lmforge.scaling import sweep as sw

# The CI sweep: 3 budgets x 4 sizes of ~5k-29k parameters (vocab 512), less the costliest runs
# (the smallest model, slowest per FLOP, at the two larger budgets): 10 runs; the smallest and
# largest budgets have their best size inside the range of sizes. 75-100 s of training on one
# busy core (other jobs beside it), less on an idle one.
MICRO = """
budgets: [3e9, 1e10, 3e10]
sizes:
  d8x1: {d_model: 8, n_layers: 1, n_heads: 2}
  d16x1: {d_model: 16, n_layers: 1, n_heads: 2}
  d24x1: {d_model: 24, n_layers: 1, n_heads: 2}
  d32x1: {d_model: 32, n_layers: 1, n_heads: 2}
seq_len: 64
micro_batch: 16
lr: 0.01
eval_batches: 16
checkpoints: 2
exclude: [d8x1@1e10, d8x1@3e10]
device: cpu
"""


def _sweep_file(tmp_path, text=MICRO, name="micro.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parameter_count_is_the_engines(sweep_inputs):
    from transformers import AutoTokenizer

    from lmforge.train.model import build_model, count_params, model_config

    tokenizer_dir, _ = sweep_inputs
    vocab = sw.tokenizer_vocab_size(tokenizer_dir)
    assert vocab == len(AutoTokenizer.from_pretrained(tokenizer_dir)) == 512
    for size in (sw.SweepSize(d_model=8, n_layers=1, n_heads=2),
                 sw.SweepSize(d_model=48, n_layers=3, n_heads=6, n_kv_heads=2),
                 sw.SweepSize(d_model=64, n_layers=2, n_heads=4, d_ff=100)):
        shape = size.shape(64)
        assert sw.count_params(shape, vocab) == count_params(build_model(model_config(shape, vocab)))


def test_plan_trains_c_over_6n_tokens_in_whole_steps(tmp_path):
    sweep = sw.load_sweep(_sweep_file(tmp_path))
    assert sweep.name == "micro"
    ids = sw.run_ids(sweep)
    assert ids[:2] == ["d8x1@3e9", "d16x1@3e9"] and len(ids) == 10 and "d32x1@3e10" in ids
    assert "d8x1@3e10" not in ids and "d8x1@1e10" not in ids
    with pytest.raises(InputError, match="no run 'd8x1@3e10'"):
        sw.parse_run_id(sweep, "d8x1@3e10")
    for run_id in ids:
        plan = sw.plan_run(sweep, run_id, 512)
        step = plan["tokens_per_step"]
        assert step == 16 * 64
        assert abs(plan["tokens"] - plan["budget"] / (6 * plan["params"])) <= step / 2
        assert plan["flops"] == 6 * plan["params"] * plan["tokens"]
        assert 1 <= plan["warmup_steps"] <= max(1, round(0.05 * plan["steps"]))
    cfg = sw.pretrain_config(sweep, "d24x1@1e10", 512, "d", "t", tmp_path / "o")
    plan = sw.plan_run(sweep, "d24x1@1e10", 512)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff) == (24, 1, 2, sw.swiglu_width(24))
    assert cfg.max_steps == plan["steps"] and cfg.cpu_threads == 1 and cfg.eval_every == 0
    assert cfg.save_every == -(-plan["steps"] // 2)
    assert sw.budget_label(2.5e12) == "2.5e12" and sw.budget_label(1e11) == "1e11"


@pytest.mark.parametrize("text, message", [
    ("budgets: [1e10]\nsizes: {a: {d_model: 30, n_layers: 1, n_heads: 4}}", "bad head layout"),
    ("budgets: []\nsizes: {a: {d_model: 32, n_layers: 1, n_heads: 4}}", "budgets"),
    ("budgets: [1e10, -1]\nsizes: {a: {d_model: 32, n_layers: 1, n_heads: 4}}", "positive"),
    ("budgets: [1e10]\nsizes: {'a b': {d_model: 32, n_layers: 1, n_heads: 4}}", "size name"),
    ("budgets: [1e10]\nsizes: {a: {d_model: 32, n_layers: 1, n_heads: 4}}\npretrain: {max_steps: 5}",
     "max_steps cannot be set"),
    ("budgets: [1e10]\nsizes: {a: {d_model: 32, n_layers: 1, n_heads: 4}}\nexclude: [b@1e10]",
     "exclude: no run b@1e10"),
    ("budgets: [1e10\n", "not valid yaml"),
    ("- 1\n- 2\n", "a sweep file is a mapping"),
])
def test_bad_sweep_file_is_one_line_naming_it(tmp_path, text, message):
    path = _sweep_file(tmp_path, text, "bad.yaml")
    with pytest.raises(InputError, match=message) as e:
        sw.load_sweep(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_sweep_file_exits_2(tmp_path):
    import subprocess
    import sys

    path = _sweep_file(tmp_path, "budgets: [1e10]\nsizes: {}\n", "bad.yaml")
    proc = subprocess.run([sys.executable, "-m", "lmforge.scaling.sweep", str(path), "--data", "d",
                           "--tokenizer", "t", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert str(path) in proc.stderr and "sizes" in proc.stderr


@pytest.mark.slow
def test_micro_sweep_on_cpu_resumes_skips_and_fits(sweep_inputs, tmp_path):
    """10 real runs through the pretraining engine; again, nothing is trained; a run whose
    result is lost is recorded again from its run directory without training; the fit of the
    runs has exponents in a sane band and the best loss falls with compute."""
    from lmforge.scaling.fit import ScalingFitConfig, fit_runs

    tokenizer_dir, shards_dir = sweep_inputs
    sweep = sw.load_sweep(_sweep_file(tmp_path))
    out = tmp_path / "sweep"
    logs: list[str] = []
    t0 = time.perf_counter()
    results = sw.run_sweep(sweep, shards_dir, tokenizer_dir, out, log=logs.append)
    first_wall = time.perf_counter() - t0
    assert len(results) == 10 and not any("skipped" in m for m in logs)
    for r in results:
        assert r["params"] == r["planned_params"]
        assert math.isfinite(r["loss"]) and r["loss"] < math.log(512)  # learned something
        assert abs(6 * r["params"] * r["tokens"] / r["budget"] - 1) < 0.1
    lines = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [x["run"] for x in lines] == sw.run_ids(sweep)

    # Again: every run is done, nothing trains.
    logs.clear()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    t0 = time.perf_counter()
    again = sw.run_sweep(sweep, shards_dir, tokenizer_dir, out, log=logs.append)
    assert sum("done already, skipped" in m for m in logs) == 10
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")} == mtimes
    assert [r["loss"] for r in again] == [r["loss"] for r in results]
    assert time.perf_counter() - t0 < first_wall / 3

    # A lost result: the run directory holds its last checkpoint, so the engine resumes at the
    # end and the same val loss is recorded.
    lost = "d16x1@1e10"
    before = next(r for r in results if r["run"] == lost)
    sw.result_path(out, lost).unlink()
    logs.clear()
    sw.run_sweep(sweep, shards_dir, tokenizer_dir, out, only=[lost], log=logs.append)
    summary = json.loads((sw.run_dir(out, lost) / "summary.json").read_text())
    assert summary["resumed_from"] == before["steps"]
    assert sw.done_result(out, lost)["loss"] == pytest.approx(before["loss"], rel=1e-6)

    # The fit: a law with sane exponents, and more compute buys a lower loss.
    best = {}
    for r in results:
        best[r["budget"]] = min(best.get(r["budget"], math.inf), r["loss"])
    losses = [best[c] for c in sorted(best)]
    assert all(b < a - 0.05 for a, b in zip(losses, losses[1:])), losses
    report = fit_runs(results, ScalingFitConfig(bootstrap=0, starts=32))
    print(json.dumps({k: report[k] for k in ("E", "A", "B", "alpha", "beta", "params", "tokens",
                                             "tokens_per_param")}))
    assert report["approach3"]["converged"]
    assert 0.05 < report["alpha"] < 1.5 and 0.05 < report["beta"] < 1.5
    assert 0 < report["E"] < min(losses)
    # the law's optimal loss falls with compute, and its optimal N grows with it
    from lmforge.scaling.fit import law_from_report

    law = law_from_report(report)
    opt = [law.optimal(c) for c in sorted(best)]
    assert all(n2 > n1 for (n1, _), (n2, _) in zip(opt, opt[1:]))
    predicted = [float(law.loss(n, d)) for n, d in opt]
    assert all(b < a for a, b in zip(predicted, predicted[1:]))


def test_cli_refuses_bad_inputs_before_making_the_sweep_dir(tmp_path, sweep_inputs):
    import shutil
    import subprocess
    import sys

    tokenizer_dir, shards_dir = sweep_inputs
    no_val = tmp_path / "no_val"
    no_val.mkdir()
    for name in ("train.bin", "train.json"):
        shutil.copy(shards_dir / name, no_val / name)
    path = _sweep_file(tmp_path)
    for data, tok, says in ((shards_dir, tmp_path / "nowhere", "no tokenizer.json"),
                            (no_val, tokenizer_dir, "no val.json")):
        out = tmp_path / "sweep"
        proc = subprocess.run([sys.executable, "-m", "lmforge.scaling.sweep", str(path), "--data",
                               str(data), "--tokenizer", str(tok), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert says in proc.stderr and not out.exists()
    # --plan prints every run's N, D and steps, and trains nothing
    proc = subprocess.run([sys.executable, "-m", "lmforge.scaling.sweep", str(path), "--data",
                           str(shards_dir), "--tokenizer", str(tokenizer_dir), "--plan"],
                          capture_output=True, text=True, timeout=120)
    plans = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["run"] for p in plans] == sw.run_ids(sw.load_sweep(path))
    assert all(p["params"] == sw.plan_run(sw.load_sweep(path), p["run"], 512)["params"] for p in plans)


def test_the_sweeps_own_data_is_made_once_and_its_vocabulary_checked(sweep_inputs, tmp_path):
    tokenizer_dir, shards_dir = sweep_inputs
    assert tokenizer_dir.parent.name == "v512" and (shards_dir / "val.json").is_file()
    docs = tokenizer_dir.parent.parent.parent / "documents.parquet"
    stamp = {p: p.stat().st_mtime_ns for p in (tokenizer_dir / "tokenizer.json", shards_dir / "train.bin")}
    assert sw.prepare_data(docs, tokenizer_dir.parent.parent, 512) == (tokenizer_dir, shards_dir)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    sweep = sw.load_sweep(_sweep_file(tmp_path, MICRO + "vocab_size: 1024\n"))
    with pytest.raises(InputError, match="is for a 1024-token vocabulary, but .* has 512 tokens"):
        sw.run_sweep(sweep, shards_dir, tokenizer_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
