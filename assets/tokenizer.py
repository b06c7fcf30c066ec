"""Tokenizer and token shards: the curated corpus turned into training input."""


from pathlib import Path

import dagster as dg

from assets.data import CURATED, curated_corpus
from lmforge.errors import LmforgeError
from lmforge.io import read_json
from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
from lmforge.tokenize.shards import ShardConfig, tokenize_days
from resources import ArtifactStore, dagster_config, engine_config

TokenizerRunConfig = dagster_config(TokenizerConfig, "TokenizerRunConfig")
TokenShardsConfig = dagster_config(ShardConfig, "TokenShardsConfig")

# Below this many bytes per token a byte-level BPE has learned almost no merges.
MIN_BYTES_PER_TOKEN = 2.0


def corpus_path(store: ArtifactStore):
    """The curated corpus: every day's documents of the last curation stage."""
    return curated_corpus(store)


@dg.asset(code_version="bpe-2", group_name="tokenizer", kinds={"huggingface"},
          deps=[CURATED])
def tokenizer(config: TokenizerRunConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """A byte-level BPE tokenizer with chat special tokens and a ChatML template, trained on a
    bounded sample of the curated days (`sample_bytes`)."""
    out = store.path("tokenizer", "tokenizer")
    stats = train_tokenizer(corpus_path(store), out, engine_config(TokenizerConfig, config))
    return dg.MaterializeResult(metadata=stats.to_metadata())


@dg.asset(code_version="shards-2", group_name="tokenizer", kinds={"numpy"}, deps=[tokenizer])
def token_shards(config: TokenShardsConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Train and validation token arrays, memory-mapped by the training processes: one shard
    set per curated day, kept in `token_shards/days/` and reused while the tokenizer and the
    day's documents are the same (a new day tokenizes only that day); the version lists them."""
    out = store.path("token_shards", "shards")
    stats = tokenize_days(corpus_path(store), store.path("tokenizer", "tokenizer"),
                          store.fixed_path("token_shards", "days"), out,
                          engine_config(ShardConfig, config))
    return dg.MaterializeResult(metadata=stats.to_metadata())


def token_shards_data(store: ArtifactStore):
    """The latest token_shards version as training reads it: its list of day shard sets, each
    of them in place (on a remote root, fetched into the cache with the version)."""
    from lmforge.tokenize.shards import SHARD_LIST

    shards = store.path("token_shards", "shards")
    listing = shards / SHARD_LIST
    if listing.is_file():
        for entry in read_json(listing)["days"]:
            # days/<tokenizer>/<day>/<input key>, as tokenize_days lays them out
            parts = Path(entry["dir"]).parts[-3:]
            if ".." in parts:
                raise LmforgeError(f"{listing}: {entry['dir']!r} is not a day shard directory")
            store.fixed_path("token_shards", "days", *parts)
    return shards


@dg.asset_check(asset=tokenizer, blocking=True)
def tokenizer_compresses(store: ArtifactStore) -> dg.AssetCheckResult:
    """A tokenizer whose compression collapsed (about one byte per token) is not worth training on."""
    meta = store.latest_metadata("tokenizer")
    value = meta.get("bytes_per_token")
    bpt = float(value.value) if value is not None else 0.0
    return dg.AssetCheckResult(passed=bpt >= MIN_BYTES_PER_TOKEN,
                               metadata={"bytes_per_token": bpt, "minimum": MIN_BYTES_PER_TOKEN})


@dg.asset_check(asset=token_shards, blocking=True)
def token_shards_not_empty(store: ArtifactStore) -> dg.AssetCheckResult:
    shards = store.path("token_shards", "shards")
    counts = {}
    for split in ("train", "val"):
        header = shards / f"{split}.json"
        counts[f"{split}_tokens"] = int(read_json(header)["num_tokens"]) if header.exists() else 0
    return dg.AssetCheckResult(passed=all(v > 0 for v in counts.values()), metadata=counts)
