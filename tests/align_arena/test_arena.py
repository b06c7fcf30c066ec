"""The arena end to end with real tiny models: an untrained model, the same model trained on some
held-out answers, and that trained model under a LoRA adapter still at its initialisation, judged
by the verifiable reward on held-out arithmetic problems. Every battle's verdict is checked
against the reward of the answers it records, the ratings order the models as their rewards do,
the adapter ties its base model on every prompt, and the CLI rates a battles file again."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.align.arena import ArenaConfig, Contestant, main, parse_contestant, run_arena
from lmforge.align.rewards import score
from lmforge.cli import run
from lmforge.io import OUTPUT_MARKER

from .conftest import write_jsonl

PROMPTS = 16


@pytest.fixture(scope="module")
def arena(base_model_dir, trained_model_dir, zero_adapter_dir, heldout_problems, tmp_path_factory):
    out = tmp_path_factory.mktemp("arena") / "out"
    cfg = ArenaConfig(
        contestants=[Contestant(name="base", model_dir=str(base_model_dir)),
                     Contestant(name="sft", model_dir=str(trained_model_dir)),
                     Contestant(name="sft+lora", model_dir=str(trained_model_dir),
                                adapter_dir=str(zero_adapter_dir))],
        out_dir=str(out), num_prompts=PROMPTS, max_new_tokens=8, rounds=200, batch_size=8)
    return cfg, run_arena(cfg)


def test_arena_writes_its_outputs(arena):
    cfg, summary = arena
    out = summary.out_dir
    import pathlib

    out = pathlib.Path(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [OUTPUT_MARKER, "battles.jsonl", "completions.jsonl", "ratings.json", "leaderboard.md",
         "leaderboard.png", "win_rates.png"])
    for png in ("leaderboard.png", "win_rates.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    battles = [json.loads(x) for x in (out / "battles.jsonl").read_text().splitlines()]
    assert len(battles) == PROMPTS * 3  # 3 pairs on every prompt
    saved = json.loads((out / "ratings.json").read_text())
    assert saved["ratings"]["models"] == summary.ratings.models
    assert saved["num_prompts"] == PROMPTS and saved["judges_used"] == {"reward": PROMPTS * 3}
    # Sides are drawn at random: no model is always model_a.
    assert {b["model_a"] for b in battles} == {"base", "sft", "sft+lora"}
    md = (out / "leaderboard.md").read_text()
    assert "| rank | model | rating |" in md and "win rate" in md
    meta = summary.to_metadata()
    assert meta["num_battles"] == PROMPTS * 3 and meta["top_model"] in ("sft", "sft+lora")
    assert json.loads(json.dumps(meta)) == meta  # plain JSON values
    assert set(meta["ratings"]) == {"base", "sft", "sft+lora"}
    from lmforge.align.arena import ArenaSummary, plots_markdown, report_section

    plots = plots_markdown(out)
    assert set(plots) == {"leaderboard_plot", "win_rates_plot"}
    assert all(v.startswith("![") and "data:image/png;base64,iVBOR" in v for v in plots.values())
    section = report_section(out)
    assert section.startswith("## Arena") and "leaderboard.png" in section and "| base |" in section
    assert ArenaSummary.model_validate_json((out / "ratings.json").read_text()) == summary


def test_every_verdict_is_the_verifiable_reward(arena, heldout_problems):
    _, summary = arena
    import pathlib

    out = pathlib.Path(summary.out_dir)
    problems = {p["id"]: p for p in heldout_problems}
    battles = [json.loads(x) for x in (out / "battles.jsonl").read_text().splitlines()]
    completions = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    answers = {(c["model"], c["prompt_id"]): c["completion"] for c in completions}
    for b in battles:
        p = problems[b["prompt_id"]]
        assert b["prompt"] == p["prompt"]
        assert (b["completion_a"], b["completion_b"]) == (answers[b["model_a"], p["id"]],
                                                         answers[b["model_b"], p["id"]])
        ra, rb = score(p, b["completion_a"]), score(p, b["completion_b"])
        want = "model_a" if ra > rb else "model_b" if rb > ra else "tie"
        assert b["winner"] == want and b["score"] == {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}[want]


def test_ratings_follow_the_rewards(arena, base_model_dir, heldout_problems):
    _, summary = arena
    r = summary.ratings
    # The trained model answers some of the problems it was taught; the untrained one none.
    assert summary.mean_reward["sft"] > 0 and summary.mean_reward["base"] == 0.0
    assert summary.mean_reward["sft"] == summary.mean_reward["sft+lora"]
    sft = r.row("sft")
    assert sft.wins == round(summary.mean_reward["sft"] * PROMPTS) and sft.losses == 0
    assert r.models[-1] == "base" and r.row("base").wins == 0
    # The adapter at its initialisation changes nothing: same answers, a tie on every prompt.
    i, j = r.models.index("sft"), r.models.index("sft+lora")
    assert r.win_rate[i][j] == 0.5 and r.battle_counts[i][j] == PROMPTS
    assert r.row("sft").rating == pytest.approx(r.row("sft+lora").rating, abs=1e-6)
    # The untrained model never won, but tied (both wrong) on the prompts the trained one missed:
    # ties are half a point each way, so the estimate is finite and the gap is the one of a
    # 2-model fit (the two sft models are the same): odds (wins + ties/2) : (ties/2).
    assert not r.separated and not r.warnings
    w, t = sft.wins, r.battle_counts[i][r.models.index("base")] - sft.wins
    assert 0 < w and 0 < t
    gap = r.row("sft").rating - r.row("base").rating
    assert gap == pytest.approx(400 * math.log10((w + t / 2) / (t / 2)), abs=1.0)
    assert r.row("sft").ci_low > r.row("base").ci_high
    # The recorded answers are the contestants' greedy answers.
    from lmforge.align.generate import generate, load_policy

    model, tok = load_policy(base_model_dir)
    direct = generate(model, tok, [p["prompt"] for p in heldout_problems[:PROMPTS]],
                      greedy=True, chat=True, max_new_tokens=8)
    import pathlib

    completions = [json.loads(x) for x in
                   (pathlib.Path(summary.out_dir) / "completions.jsonl").read_text().splitlines()]
    assert [c["completion"] for c in completions if c["model"] == "base"] == [d[0] for d in direct]


def test_battles_file_is_rated_again_by_the_cli(arena, tmp_path, capsys):
    cfg, summary = arena
    out = tmp_path / "rerated"
    rc = main(["--battles", f"{summary.out_dir}/battles.jsonl", "--out", str(out), "--rounds", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| rank | model | rating |" in printed and "judge: (from battles file)" in printed
    again = json.loads((out / "ratings.json").read_text())["ratings"]
    # Battles are re-read in file order, so the model order (and the bootstrap draws) may differ:
    # the estimates agree exactly, the intervals to bootstrap noise.
    for row in summary.ratings.leaderboard:
        other = next(x for x in again["leaderboard"] if x["model"] == row.model)
        assert other["rating"] == pytest.approx(row.rating, abs=1e-6)
        assert (other["wins"], other["losses"], other["ties"]) == (row.wins, row.losses, row.ties)
    assert not (out / "completions.jsonl").exists()


def test_cli_on_synthetic_battles(tmp_path, capsys):
    from lmforge.align.ratings import simulate_battles

    battles = write_jsonl(tmp_path / "b.jsonl", simulate_battles({"x": 1100, "y": 1000, "z": 900}, 900))
    rc = run("arena", main, ["--battles", str(battles), "--out", str(tmp_path / "o"),
                             "--rounds", "100", "--anchor", "y", "--ci", "0.9"])
    assert rc == 0
    r = json.loads((tmp_path / "o" / "ratings.json").read_text())["ratings"]
    assert r["models"] == ["x", "y", "z"] and r["anchor"] == "y" and r["ci"] == 0.9
    assert next(x for x in r["leaderboard"] if x["model"] == "y")["rating"] == pytest.approx(1000)
    assert "90% CI" in capsys.readouterr().out


def test_parse_contestant():
    assert parse_contestant("sft=runs/sft/model") == Contestant(name="sft", model_dir="runs/sft/model")
    c = parse_contestant("math=runs/sft/model:runs/lora/adapter")
    assert (c.name, c.model_dir, c.adapter_dir) == ("math", "runs/sft/model", "runs/lora/adapter")


@pytest.fixture
def battles_file(tmp_path):
    return write_jsonl(tmp_path / "battles.jsonl", [
        {"model_a": "a", "model_b": "b", "winner": "model_a"},
        {"model_a": "b", "model_b": "a", "winner": "model_a"}])


def _err(capsys, argv) -> str:
    rc = run("arena", main, argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmforge arena: error: "), err
    return lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, battles_file, base_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model_a": "a", "model_b": "b", "winner": "model_a"}\n{not json\n')
    assert f"{bad}:2: not JSON" in _err(capsys, ["--battles", str(bad), "--out", str(tmp_path / "o")])
    bad.write_text('{"model_a": "a", "model_b": "b", "winner": "a"}\n')
    assert f"{bad}:1: winner must be one of" in _err(capsys, ["--battles", str(bad), "--out", str(tmp_path / "o")])
    one = write_jsonl(tmp_path / "one.jsonl", [{"model_a": "a", "model_b": "a", "winner": "tie"}])
    assert "cannot battle itself" in _err(capsys, ["--battles", str(one), "--out", str(tmp_path / "o")])
    assert "no battles file at" in _err(capsys, ["--battles", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert "--out is required" in _err(capsys, ["--battles", str(battles_file)])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("x")
    assert "non-empty directory that lmforge did not make" in _err(
        capsys, ["--battles", str(battles_file), "--out", str(taken)])
    assert (taken / "mine.txt").read_text() == "x"
    out = str(tmp_path / "o")
    assert "at least 2 models, got 1" in _err(capsys, ["--model", f"a={base_model_dir}", "--out", out])
    assert "at least 2 models, got 0" in _err(capsys, ["--out", out])
    assert "expected NAME=MODEL_DIR" in _err(capsys, ["--model", "nodir", "--out", out])
    assert "names must be unique: a" in _err(
        capsys, ["--model", f"a={base_model_dir}", "--model", f"a={base_model_dir}", "--out", out])
    assert "is not a model directory" in _err(
        capsys, ["--model", f"a={base_model_dir}", "--model", f"b={tmp_path}", "--out", out])
    assert "is not a PEFT adapter" in _err(
        capsys, ["--model", f"a={base_model_dir}", "--model", f"b={base_model_dir}:{tmp_path}", "--out", out])
    two = ["--model", f"a={base_model_dir}", "--model", f"b={base_model_dir}", "--out", out]
    assert "unknown judge 'oracle'; known:" in _err(capsys, two + ["--judge", "oracle"])
    assert "--anchor 'c' is not one of the contestants" in _err(capsys, two + ["--anchor", "c"])
    assert "--judge-model-dir: no directory at" in _err(
        capsys, two + ["--judge", "judge_model", "--judge-model-dir", str(tmp_path / "nojudge")])
    assert "needs --reward-model-dir" in _err(capsys, two + ["--judge", "reward_model"])
    assert "--problems: no file at" in _err(capsys, two + ["--problems", str(tmp_path / "p.jsonl")])
    assert "--tie-margin" in _err(capsys, two + ["--tie-margin", "0.7"])
    models = tmp_path / "models.yaml"
    models.write_text("- {name: a}\n")
    assert "bad contestant" in _err(capsys, ["--models", str(models), "--out", out])
    assert not (tmp_path / "o").exists()  # nothing was written by a failed run


def test_models_file_and_open_ended_prompts(tmp_path, base_model_dir, trained_model_dir):
    # Contestants from YAML; the auto judge uses the verifiable reward where a prompt has one and
    # the judge model (asked in both orders) for the open-ended one.
    models = tmp_path / "models.yaml"
    models.write_text(f"base: {base_model_dir}\nsft: {{model_dir: {trained_model_dir}}}\n")
    problems = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "q0", "prompt": "3+1=", "answer": "4", "reward": "final_answer"},
        {"prompt": "Say something kind."},
        {"id": "q2", "prompt": "5+1=", "answer": "6", "reward": "exact_match"}])
    out = tmp_path / "o"
    rc = main(["--models", str(models), "--problems", str(problems), "--out", str(out),
               "--judge-model-dir", str(trained_model_dir), "--tie-margin", "0.01",
               "--max-new-tokens", "4", "--rounds", "50"])
    assert rc == 0
    battles = [json.loads(x) for x in (out / "battles.jsonl").read_text().splitlines()]
    assert [b["judge"] for b in battles] == ["reward", "judge_model", "reward"]
    assert battles[1]["prompt_id"] == "2"  # the line number when a prompt has no id
    for b in battles:
        assert 0.0 <= b["score"] <= 1.0
        assert b["winner"] == ("tie" if abs(b["score"] - 0.5) <= 0.01 else
                               "model_a" if b["score"] > 0.5 else "model_b")
    saved = json.loads((out / "ratings.json").read_text())
    assert saved["judges_used"] == {"reward": 2, "judge_model": 1}
    assert set(saved["mean_reward"]) == {"base", "sft"}  # over the 2 prompts with a reward


def test_bad_prompt_files(tmp_path, capsys, base_model_dir):
    two = ["--model", f"a={base_model_dir}", "--model", f"b={base_model_dir}", "--out", str(tmp_path / "o")]
    for rows, message in [([{"id": "x"}], ":1: a prompt record needs a non-empty string 'prompt'"),
                          ([{"prompt": "1+1=", "answer": "2", "reward": "magic"}], "unknown reward 'magic'"),
                          ([{"prompt": "1+1=", "reward": "final_answer"}], "needs a string 'answer'")]:
        path = write_jsonl(tmp_path / "p.jsonl", rows)
        assert message in _err(capsys, two + ["--problems", str(path)])
    # An open-ended prompt with no model judge to decide it fails before any model runs.
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi."}])
    assert "no verifiable reward" in _err(capsys, two + ["--problems", str(path)])


def test_reward_model_judge_in_the_arena(tmp_path, base_model_dir, trained_model_dir, reward_model_dir):
    out = tmp_path / "o"
    rc = main(["--model", f"base={base_model_dir}", "--model", f"sft={trained_model_dir}",
               "--judge", "reward_model", "--reward-model-dir", str(reward_model_dir),
               "--num-prompts", "4", "--max-new-tokens", "4", "--rounds", "50", "--out", str(out)])
    assert rc == 0
    saved = json.loads((out / "ratings.json").read_text())
    assert saved["judge"] == "reward_model" and saved["judges_used"] == {"reward_model": 4}
    battles = [json.loads(x) for x in (out / "battles.jsonl").read_text().splitlines()]
    from lmforge.align.reward_model import load_reward_model

    rm = load_reward_model(reward_model_dir)
    for b in battles:
        ra, rb = rm.score([b["prompt"]] * 2, [b["completion_a"], b["completion_b"]])
        assert b["score"] == pytest.approx(1 / (1 + math.exp(rb - ra)), abs=1e-6)
