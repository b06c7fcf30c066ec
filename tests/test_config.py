"""Config is declared once: every engine config field has a description, every command's flags are
generated from its config (``--help`` names every field), and flags, ``--config FILE`` and bad
values behave the same way for every stage."""

from __future__ import annotations

import importlib
import json
import pkgutil
import pydoc

import pyarrow.parquet as pq
import pydantic
import pytest

import lmforge
from lmforge import cli
from lmforge.config import flag_name
from lmforge.io import write_parquet

# Configs owned by other parts of the work that still lack descriptions on some fields. The
# coordinator empties this list; the test below fails when an entry has been fixed (so the list
# cannot keep a config that no longer needs it) as well as when a config not listed lacks one.
KNOWN_UNDESCRIBED: set[str] = set()


def _engine_configs() -> dict[str, type[pydantic.BaseModel]]:
    """Every pydantic model named ``*Config`` defined in a module of lmforge."""
    found: dict[str, type[pydantic.BaseModel]] = {}
    for info in pkgutil.walk_packages(lmforge.__path__, "lmforge."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, pydantic.BaseModel)
                    and obj.__module__ == module.__name__ and name.endswith("Config")):
                found[name] = obj
    return found


def _undescribed(model: type[pydantic.BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if not (f.description or "").strip()]


def test_every_engine_config_field_has_a_description():
    configs = _engine_configs()
    # The walk must find the stages' configs, or it checks nothing.
    assert {"ExtractConfig", "FilterConfig", "QualityConfig", "TokenizerConfig", "ShardConfig",
            "CrawlConfig", "SandboxConfig", "EvalConfig"} <= set(configs)
    lacking = {name: _undescribed(model) for name, model in configs.items() if _undescribed(model)}
    assert set(lacking) - KNOWN_UNDESCRIBED == set(), lacking
    fixed = KNOWN_UNDESCRIBED - set(lacking)
    assert not fixed, f"remove {sorted(fixed)} from KNOWN_UNDESCRIBED: every field is described"


def test_suite_yaml_models_are_described():
    from lmforge.evaluate.harness import Suite, SuiteTask

    assert _undescribed(Suite) == [] and _undescribed(SuiteTask) == []


# ----------------------------------------------------------------------------------------------
# `lmforge CMD --help` names every field of the stage's config

def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv) + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _commands():
    from lmforge.crawl.crawler import CrawlConfig
    from lmforge.curate.extract import ExtractConfig
    from lmforge.curate.filter import FilterConfig
    from lmforge.curate.quality import TRAINING_ONLY, QualityConfig
    from lmforge.evaluate.harness import EvalConfig
    from lmforge.evaluate.sandbox import SandboxConfig
    from lmforge.tokenize.bpe import TokenizerConfig
    from lmforge.tokenize.shards import ShardConfig
    from lmforge.align.arena import ArenaConfig
    from lmforge.scaling.fit import ScalingFitConfig

    every = lambda model: list(model.model_fields)  # noqa: E731
    return [
        (["crawl"], every(CrawlConfig)),
        (["extract"], every(ExtractConfig)),
        (["filter"], every(FilterConfig)),
        (["quality", "train"], every(QualityConfig)),
        (["quality", "score"], [f for f in QualityConfig.model_fields if f not in TRAINING_ONLY]),
        (["train-tokenizer"], every(TokenizerConfig)),
        (["tokenize"], every(ShardConfig)),
        (["humaneval-exec"], every(SandboxConfig)),
        (["eval"], every(EvalConfig)),
        (["arena"], every(ArenaConfig)),
        (["scaling-fit"], every(ScalingFitConfig)),
    ]


@pytest.mark.parametrize("argv,fields", _commands(), ids=lambda x: " ".join(x) if x and
                         isinstance(x[0], str) and len(x) <= 2 else "fields")
def test_help_names_every_field(capsys, argv, fields):
    text = _help(capsys, *argv)
    flags = set(text.replace(",", " ").replace("[", " ").replace("]", " ").split())
    missing = [f for f in fields if flag_name(f) not in flags]
    assert not missing, f"lmforge {' '.join(argv)} --help lacks {missing}"
    assert "--config" in flags


def test_quality_score_takes_every_field_across_its_two_commands():
    from lmforge.curate.quality import TRAINING_ONLY, QualityConfig

    assert set(TRAINING_ONLY) < set(QualityConfig.model_fields)


# ----------------------------------------------------------------------------------------------
# Flags override the defaults and --config; bad values are one line and exit status 2

@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """English documentation pages (the demo's kind of text): the filter keeps them by default."""
    import json as json_mod
    import string
    import textwrap

    texts = [pydoc.plain(pydoc.render_doc(m)) for m in (json_mod, string, textwrap)]
    path = tmp_path_factory.mktemp("docs") / "docs.parquet"
    write_parquet(path, [{"id": str(i), "url": f"http://docs.test/{i}", "text": t}
                         for i, t in enumerate(texts)])
    return path


def _kept(capsys, tmp_path, docs, *flags: str) -> int:
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.parquet"
    assert cli.main(["filter", str(docs), str(out), *flags]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return pq.read_metadata(out).num_rows


def test_flag_and_config_file_set_fields(capsys, tmp_path, docs):
    assert _kept(capsys, tmp_path, docs) == 3  # the defaults keep documentation pages
    assert _kept(capsys, tmp_path, docs, "--min-words", "1000000") == 0
    cfg = tmp_path / "filter.yaml"
    cfg.write_text("min_words: 1000000\nlanguages: [en]\n")
    assert _kept(capsys, tmp_path, docs, "--config", str(cfg)) == 0
    # A flag given on the command line wins over the file.
    assert _kept(capsys, tmp_path, docs, "--config", str(cfg), "--min-words", "10") == 3
    # A JSON file, an inline JSON object, and a list flag work alike.
    jcfg = tmp_path / "filter.json"
    jcfg.write_text(json.dumps({"languages": ["fr", "de"]}))
    assert _kept(capsys, tmp_path, docs, "--config", str(jcfg)) == 0
    assert _kept(capsys, tmp_path, docs, "--config", '{"languages": ["fr"]}') == 0
    assert _kept(capsys, tmp_path, docs, "--languages", "fr,en") == 3
    # A bound set to none switches its rule off.
    assert _kept(capsys, tmp_path, docs, "--min-words", "none", "--max-words", "5") == 0
    assert _kept(capsys, tmp_path, docs, "--max-words", "none") == 3


@pytest.mark.parametrize("flags,says", [
    (["--min-words", "many"], "--min-words"),
    (["--min-lang-score", "high"], "--min-lang-score"),
    (["--config", "{not json"], "--config"),
    (["--config", "{missing}.yaml"], "no file"),
    (["--config", '{"min_wrods": 3}'], "min_wrods"),
    (["--config", "{list}"], "mapping"),
])
def test_bad_values_are_one_line_and_exit_2(capsys, tmp_path, docs, flags, says):
    listed = tmp_path.parent / f"{tmp_path.name}-list.yaml"  # a YAML file holding a list
    listed.write_text("- 1\n- 2\n")
    flags = [f.replace("{missing}", str(tmp_path / "missing")).replace("{list}", str(listed))
             for f in flags]
    out = tmp_path / "out.parquet"
    assert cli.main(["filter", str(docs), str(out), *flags]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("argv", [
    ["train-tokenizer", "{docs}", "{tmp}/tok", "--vocab-size", "10"],
    ["tokenize", "{docs}", "{tmp}/shards", "--tokenizer", "{tmp}", "--val-fraction", "2"],
    ["extract", "{tmp}/x.warc.gz", "{tmp}/o.parquet", "--max-invalid-fraction", "lots"],
    ["quality", "score", "{docs}", "{tmp}/q.parquet", "--model", "{tmp}", "--keep-fraction", "x"],
    ["crawl", "--out", "{tmp}/crawl", "--seed", "http://a.test/", "--max-pages", "0"],
    ["humaneval-exec", "{tmp}/s.jsonl", "--timeout", "-1"],
    ["eval", "--model", "{tmp}", "--batch-size", "eight"],
])
def test_every_stage_refuses_a_bad_flag_value_in_one_line(capsys, tmp_path, docs, argv):
    argv = [a.replace("{docs}", str(docs)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    bad_flag = next(a for a in reversed(argv) if a.startswith("--"))
    assert bad_flag in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_earlier_flag_names_still_work(capsys):
    """Flags renamed by generating them from the fields keep their earlier names as aliases."""
    text = _help(capsys, "crawl")
    for alias in ("--seed", "--delay", "--timeout", "--ignore-robots", "--allowed-domain"):
        assert alias in text
    assert "--c4-lines" in _help(capsys, "filter")
    assert "--word-ngrams" in _help(capsys, "quality", "train")
    text = _help(capsys, "eval")
    for alias in ("--model", "--adapter", "--out", "--heldout", "--chat"):
        assert alias in text
