"""A preset that names a FLOP budget: the model shape and steps from the latest scaling fit in the
artifact store, or from the published Chinchilla fit where there is none."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.scaling.budget import budget_plan, current_law, latest_fit, shape_for_params
from lmforge.scaling.fit import BESIROGLU, HOFFMANN, LossLaw
from lmforge.scaling.sweep import count_params


def _write_fit(root, law, name="v1", sweep="x"):
    """A fit of ``sweep``, as the fit asset leaves it: the sweep's pointer and the global one."""
    d = root / f"scaling_fit_{sweep}" / name
    d.mkdir(parents=True)
    (d / "fit.json").write_text(json.dumps({**law.to_dict(), "budget": 1e20}))
    for pointer in (root / "scaling_fit" / "latest.json", root / f"scaling_fit_{sweep}" / "latest.json"):
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps({"path": str(d / "fit.json"), "sweep": sweep}))
    return d / "fit.json"


@pytest.mark.parametrize("target", [2e6, 3e7, 1.2e8, 7e8, 3e9])
def test_shape_for_params_is_near_the_target_with_sane_heads(target):
    shape = shape_for_params(target, 32_768, 1024)
    n = count_params(shape, 32_768)
    assert abs(math.log(n / target)) < 0.1, (shape, n)
    assert shape.d_model % shape.n_heads == 0 and shape.d_model // shape.n_heads == 64
    assert shape.n_heads % shape.n_kv_heads == 0
    assert 16 <= shape.d_model / shape.n_layers <= 512


def test_budget_plan_spends_the_budget_on_the_laws_optimum():
    plan = budget_plan(1e18, 32_768, 1024, 32 * 1024, HOFFMANN)
    n_opt, d_opt = HOFFMANN.optimal(1e18)
    assert plan["params_opt"] == pytest.approx(n_opt) and plan["tokens_opt"] == pytest.approx(d_opt)
    assert abs(math.log(plan["params"] / n_opt)) < 0.1
    # 6 N D is the budget for the shape's actual N, to within one step's tokens
    assert abs(6 * plan["params"] * plan["tokens"] / 1e18 - 1) < 32 * 1024 / plan["tokens"] + 1e-9
    assert plan["overrides"]["max_steps"] * 32 * 1024 == plan["tokens"]
    with pytest.raises(ValueError, match="positive"):
        budget_plan(0, 32_768, 1024, 1024)


def test_latest_fit_or_the_published_one(tmp_path):
    law, source = current_law(tmp_path)
    assert law == HOFFMANN and "Hoffmann" in source
    path = _write_fit(tmp_path, BESIROGLU)
    assert latest_fit(tmp_path)["path"] == str(path)
    law, source = current_law(tmp_path)
    assert law == BESIROGLU and source == str(path)
    # a broken pointer or report is no fit
    path.write_text("{not json")
    assert latest_fit(tmp_path) is None and current_law(tmp_path)[0] == HOFFMANN


def test_budget_preset_takes_its_shape_from_the_fit(tmp_path, monkeypatch):
    from pipelines.presets import PRESETS, budget_config, run_config

    preset = PRESETS["chinchilla-1e18"]
    assert preset.flop_budget == 1e18 and not preset.schedule_running
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tmp_path))
    op = "chinchilla_1e18__pretrained_model"  # the op of the preset's deployment
    cfg = run_config("chinchilla-1e18")["ops"][op]["config"]
    assert cfg["device"] == "cuda" and cfg["micro_batch"] == 32 and cfg["seq_len"] == 1024
    shape = shape_for_params(1, 1, 1).__class__(
        d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
        n_kv_heads=cfg["n_kv_heads"], d_ff=cfg["d_ff"], seq_len=1024, tie_embeddings=True)
    n = count_params(shape, 32_768)
    assert abs(math.log(n / HOFFMANN.optimal(1e18)[0])) < 0.1
    tokens = cfg["max_steps"] * 32 * 1024
    assert abs(6 * n * tokens / 1e18 - 1) < 0.01
    # A fit of another sweep (the CPU micro sweep) does not size a GPU preset.
    data_hungry = LossLaw(E=1.69, A=406.4, B=4107.0, alpha=0.34, beta=0.28)
    # Fits live in the deployment's own directory of the store.
    own = tmp_path / "chinchilla_1e18"
    _write_fit(own, data_hungry, sweep="tiny")
    assert run_config("chinchilla-1e18")["ops"][op]["config"] == cfg
    # A fit of the preset's sweep decides: a law whose data term is 10x larger wants a smaller
    # model trained on more tokens.
    assert preset.scaling_sweep == "gpu"
    _write_fit(tmp_path / "tiny", data_hungry, name="v2", sweep="gpu")  # another deployment's
    assert run_config("chinchilla-1e18")["ops"][op]["config"] == cfg
    _write_fit(own, data_hungry, name="v2", sweep="gpu")
    fitted = run_config("chinchilla-1e18")["ops"][op]["config"]
    assert fitted == budget_config(preset, str(tmp_path)) | {
        k: cfg[k] for k in ("device", "compile", "micro_batch", "seq_len")}
    assert data_hungry.optimal(1e18)[0] < HOFFMANN.optimal(1e18)[0] / 2
    assert fitted["d_model"] * fitted["n_layers"] < cfg["d_model"] * cfg["n_layers"]
    assert fitted["max_steps"] > cfg["max_steps"]


def test_a_budget_preset_that_also_sets_the_shape_fails_in_one_line(monkeypatch):
    from lmforge.errors import LmforgeError
    from pipelines import presets

    assets = set().union(*(p.config for p in presets.PRESETS.values()))
    presets.validate_presets(assets, {"smoke", "standard"})
    monkeypatch.setitem(presets.PRESETS, "both", presets.Preset(
        "both", "x", suite="smoke", flop_budget=1e18, config={"pretrained_model": {"d_model": 64}}))
    with pytest.raises(LmforgeError, match="preset 'both': names a flop_budget and sets "
                                           "pretrained_model d_model"):
        presets.validate_presets(assets, {"smoke", "standard"})
    monkeypatch.setitem(presets.PRESETS, "both", presets.Preset("both", "x", suite="smoke",
                                                                flop_budget=-1.0))
    with pytest.raises(LmforgeError, match="flop_budget must be positive"):
        presets.validate_presets(assets, {"smoke", "standard"})
