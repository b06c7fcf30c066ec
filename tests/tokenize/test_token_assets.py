"""The tokenizer and token_shards assets through Dagster: a second curated day tokenizes only that
day, and training reads the version's list of day shards."""

from __future__ import annotations

import dagster as dg

from lmforge.io import write_parquet


def test_a_new_day_materializes_only_that_days_shards(tmp_path, monkeypatch, gsm8k_docs):
    import assets.tokenizer as tk
    from assets.data import CURATED
    from lmforge.train.data import TokenWindows, shard_dirs
    from resources import ArtifactStore

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    corpus = store.fixed_path(CURATED, "documents")
    corpus.mkdir(parents=True)
    rows = gsm8k_docs(400)
    write_parquet(corpus / "2026-01-01.parquet", rows[:200])
    instance = dg.DagsterInstance.get()
    config = {"ops": {"tokenizer": {"config": {"vocab_size": 400}}}}

    first = dg.materialize([tk.tokenizer, tk.token_shards], instance=instance, run_config=config,
                           resources={"store": store})
    assert first.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in first.get_asset_materialization_events()}
    assert meta["token_shards"]["days"].value == meta["token_shards"]["days_tokenized"].value == 1

    write_parquet(corpus / "2026-01-02.parquet", rows[200:])
    # The tokenizer is frozen (the automation does not run it again): only the shards.
    second = dg.materialize([tk.token_shards], instance=instance, resources={"store": store})
    assert second.success
    mat = second.get_asset_materialization_events()[0].materialization
    assert (mat.metadata["days"].value, mat.metadata["days_tokenized"].value) == (2, 1)
    data = tk.token_shards_data(store)
    assert [d.parts[-2] for d in shard_dirs(data)] == ["2026-01-01", "2026-01-02"]
    windows = TokenWindows(data, "train", seq_len=32)
    assert len(windows.tokens) == mat.metadata["train_tokens"].value
    assert (data / "val.parquet").is_file()
    check = dg.materialize([tk.token_shards], instance=instance, resources={"store": store})
    assert check.success  # nothing new: every day reused
    again = check.get_asset_materialization_events()[0].materialization
    assert again.metadata["days_tokenized"].value == 0
