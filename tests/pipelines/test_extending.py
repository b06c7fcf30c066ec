"""The README's "Extending lmforge" examples, run exactly as written (tests/readme_examples.py):
a new curation stage is one module plus one entry in the stage list, and shows up everywhere;
a new preset is one entry and gets its jobs and schedule."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from readme_examples import readme_block

DAY = "2026-05-01"

# Runs in a fresh interpreter: the stage list is read when the graph and the CLI are built, as it
# is when a user has edited lmforge/curate/stages.py. The module is written beside the package
# (a temporary directory on lmforge.curate's search path), not into the checkout.
SCRIPT = textwrap.dedent('''
    import json, sys
    import lmforge.curate
    lmforge.curate.__path__.append(sys.argv[1])
    from lmforge.curate import stages
    from lmforge.curate.stages import Stage
    entry = eval(open(sys.argv[2]).read(), {"Stage": Stage})
    stages.CURATION_STAGES[:] = stages.insert_stage(stages.CURATION_STAGES, entry,
                                                    after="deduplicated_documents")

    import dagster as dg
    from pipelines.definitions import JOB_ASSETS, defs
    from pipelines.presets import run_config
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(["tiny", "long_documents"])
    result = defs.resolve_job_def("curation").execute_in_process(
        run_config=run_config("tiny", {"crawled_pages": {"max_pages": 12, "max_depth": 1},
                                       "long_documents": {"min_chars": int(sys.argv[3])}},
                              assets=JOB_ASSETS["curation"]),
        instance=dg.DagsterInstance.get(), raise_on_error=False, partition_key=sys.argv[4])
    decon = [r for r in result.get_asset_materialization_events()
             if r.asset_key == dg.AssetKey(["tiny", "decontaminated_documents"])]
    out = {
        "success": result.success,
        "in_graph": key in graph.get_all_asset_keys(),
        "parents_of_decontamination": sorted(
            k.path[-1] for k in graph.get(dg.AssetKey(["tiny", "decontaminated_documents"])).parent_keys),
        "parents_of_stage": sorted(k.path[-1] for k in graph.get(key).parent_keys),
        "checks": sorted(c.name for c in graph.asset_check_keys if c.asset_key == key),
        "funnel": stages.stage_names(),
        "curation_job_has_it": "long_documents" in JOB_ASSETS["curation"],
        "decontamination_input": decon[0].materialization.metadata["input_documents"].value if decon else None,
        "description": graph.get(key).description,
    }
    print("RESULT " + json.dumps(out))
''')


@pytest.mark.slow
def test_the_readme_stage_example_is_one_module_and_one_entry(tmp_path, monkeypatch):
    from lmforge.io import count_rows, parquet_files, read_parquet_rows, removed_files

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "dagster").mkdir()
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "min_chars.py").write_text(readme_block("stage-module"))
    entry = tmp_path / "entry.py"
    entry.write_text(readme_block("stage-entry"))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)

    proc = subprocess.run([sys.executable, str(script), str(modules), str(entry), "600", DAY],
                          capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert got["success"], proc.stderr[-3000:]
    # In the graph, between dedup and decontamination, with its check, in the curation job,
    # in the report's funnel.
    assert got["in_graph"] and got["curation_job_has_it"]
    assert got["parents_of_stage"] == ["deduplicated_documents"]
    assert got["parents_of_decontamination"] == ["long_documents"]
    assert got["checks"] == ["long_documents_not_empty"]
    assert got["funnel"].index("long_documents") == got["funnel"].index("deduplicated_documents") + 1
    assert got["description"] == "remove documents shorter than min_chars characters"

    # It ran for real, with the run config's value, and the data downstream is its output.
    art = tmp_path / "artifacts" / "tiny"
    day = art / "long_documents" / "documents" / DAY
    kept = [r["text"] for r in read_parquet_rows(day, ["text"])]
    removed = [r["reason"] for f in removed_files(day) for r in read_parquet_rows(f, ["reason"])]
    assert len(removed_files(day)) == len(parquet_files(day))  # each part's removed beside it
    assert all(len(t) >= 600 for t in kept)
    assert set(removed) <= {"too_short"}
    dedup_kept = count_rows(art / "deduplicated_documents" / "documents" / DAY)
    assert len(kept) + len(removed) == dedup_kept
    assert got["decontamination_input"] == len(kept)


def test_the_readme_stage_example_has_a_command_listing_every_field(tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "min_chars.py").write_text(readme_block("stage-module"))
    (tmp_path / "entry.py").write_text(readme_block("stage-entry"))
    code = textwrap.dedent('''
        import sys
        import lmforge.curate
        lmforge.curate.__path__.append(sys.argv[1])
        from lmforge.curate import stages
        from lmforge.curate.stages import Stage
        entry = eval(open(sys.argv[2]).read(), {"Stage": Stage})
        stages.CURATION_STAGES[:] = stages.insert_stage(stages.CURATION_STAGES, entry,
                                                        after="deduplicated_documents")
        stages.validate_stages(stages.CURATION_STAGES)
        from lmforge import cli
        sys.exit(cli.main(sys.argv[3:]))
    ''')
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code, str(modules), str(tmp_path / "entry.py"), *args],
        capture_output=True, text=True, timeout=300)
    listing = run("--help")
    assert "min-chars" in listing.stdout
    helped = run("min-chars", "--help")
    assert helped.returncode == 0 and "--min-chars" in helped.stdout
    assert "documents with fewer characters are removed" in helped.stdout

    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "url": "u", "text": "short"},
                                         {"id": "b", "url": "u", "text": "long enough " * 10}]), docs)
    done = run("min-chars", str(docs), str(tmp_path / "out.parquet"), "--min-chars", "50")
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["b"]
    assert pq.read_table(tmp_path / "out.removed.parquet").column("reason").to_pylist() == ["too_short"]
    bad = run("min-chars", str(docs), str(tmp_path / "o2.parquet"), "--min-chars", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_readme_preset_example_gets_jobs_and_a_schedule():
    from pipelines import presets

    entry = eval(readme_block("preset-entry"), {"Preset": presets.Preset})
    code = textwrap.dedent('''
        import sys
        from pipelines import presets
        entry = eval(open(sys.argv[1]).read(), {"Preset": presets.Preset})
        presets.PRESETS[entry.name] = entry
        import dagster as dg
        from pipelines.definitions import JOB_ASSETS, defs
        for kind, assets in JOB_ASSETS.items():
            job = defs.resolve_job_def(presets.job_name(kind, entry.name))
            dg.validate_run_config(job, presets.run_config(entry.name, assets=assets))
        s = defs.resolve_schedule_def(presets.schedule_name(entry.name))
        print("RESULT", s.cron_schedule, s.default_status.value)
    ''')
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(readme_block("preset-entry"))
    proc = subprocess.run([sys.executable, "-c", code, f.name], capture_output=True, text=True,
                          timeout=300)
    assert "RESULT 30 3 * * * STOPPED" in proc.stdout, proc.stderr[-2000:]
    assert entry.config["pretrained_model"]["d_model"] == 192
