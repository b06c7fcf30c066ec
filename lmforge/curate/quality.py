"""Model-based quality filtering in the style of DCLM (Li et al. 2024): a fastText classifier that
tells "text like our reference data" (``__label__hq``) from "text like the raw crawl"
(``__label__lq``), then a filter that keeps documents whose P(hq) clears a threshold.

    lmforge quality train raw_documents.parquet quality_model/ --positives ref.jsonl
    lmforge quality score filtered.parquet quality.parquet --model quality_model/ --threshold 0.5

The recipe is DCLM's: positives are curated reference text, negatives are a random sample of the
very crawl being filtered, the two classes are balanced, each example is one lowercased line of
text, and the model is a bigram fastText classifier. A held-out part of both classes (never
trained on) gives the precision, recall and accuracy written to ``quality.json`` beside the model.

Positives. DCLM's are OpenHermes-2.5 instructions and top ELI5 answers, which are not on this
machine. When ``positives`` is empty the default is the GSM8K *train* split of the offline
benchmark mirror (``lmforge.paths.benchmarks_dir()``): 7,473 grade-school problems with worked
answers, written by people, in the question-and-answer register DCLM found works best. Only the
train split is read, never the test split, so the filter cannot leak the GSM8K evaluation into
pretraining data. GSM8K's calculator annotations (``<<48/2=24>>``) are stripped and its final
``#### 72`` becomes ``The answer is 72.``, so the classifier learns prose, not the markup. When
there is no mirror, training stops with an error that names the ``positives`` option.

What a threshold means. P(hq) is "looks like the positives rather than like the crawl": on a
crawl of documentation pages with GSM8K as positives, most pages score low, and a fixed 0.5 can
remove nearly all of them. DCLM keeps a fixed *fraction* of the crawl (the top 10 % by score);
``keep_fraction`` does that (two passes over the input), and overrides ``threshold`` when set.

Scoring adds a ``quality`` column (P(hq), float32) to every document; removed documents go to the
removed file with ``reason = "quality"``. Stats give the keep rate and the score distribution.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:  # numpy and pyarrow load where the work happens
    import numpy as np
    import pyarrow as pa

from pydantic import BaseModel, Field

from lmforge.config import add_config_arguments, config_from_args
# The data helpers live in quality_data; they stay importable from here, where callers found them.
from lmforge.curate.parallel import add_parallel_arguments, parallel_from_args
from lmforge.curate.quality_data import (_sample, binary_metrics, fasttext_line,  # noqa: F401
                                         qa_text, read_texts)
from lmforge.curate.text import (InputError, MissingInputError, check_outputs, extend_schema,
                                 input_schema, load_fasttext_model, open_sinks)
from lmforge.errors import LmforgeError
from lmforge.io import (atomic_path, check_output, claim_output_dir, read_json, read_parquet_rows,
                        removed_path_for, write_json)
from lmforge.paths import benchmarks_dir

HQ, LQ = "__label__hq", "__label__lq"
MODEL_FILE, META_FILE = "quality.bin", "quality.json"
FORMAT = 1  # bump when the text normalization changes: a model only fits its own normalization


# Fields a scoring run does not use (the model directory fixes them): `quality score` leaves them out.
TRAINING_ONLY = ("positives", "negatives_limit", "max_examples_per_class", "holdout_fraction",
                 "min_words", "max_chars", "epoch", "lr", "wordNgrams", "dim", "bucket",
                 "minCount", "thread", "seed")


class QualityConfig(BaseModel):
    """Training and scoring settings. Defaults are the `tiny` preset (a few seconds on a CPU)."""

    positives: list[str] = Field(
        default_factory=list, description="reference text: Parquet files or directories with "
        "`text`, JSONL with `text` or `question`/`answer` (GSM8K style), or plain .txt files "
        "(split at blank lines); empty = the GSM8K train split of the benchmark mirror")
    negatives_limit: int | None = Field(20_000, description="crawl documents read at most "
                                        "(none = all)")
    max_examples_per_class: int = Field(5_000, description="after balancing, each class has at "
                                        "most this many examples")
    holdout_fraction: float = Field(0.1, description="of each class, kept out of training for "
                                    "the held-out metrics")
    min_words: int = Field(5, description="training examples with fewer words are skipped "
                           "(empty pages, stubs)")
    max_chars: int = Field(20_000, description="only the start of a long document is used, in "
                           "training and (through the model's quality.json) in scoring")

    # fastText (train_supervised). Bigrams as in DCLM; a small dim and hash-bucket table keep the
    # tiny model at a few MB (fastText's default bucket=2M makes every model ~800 MB at dim 100).
    epoch: int = Field(10, description="fastText epochs")
    lr: float = Field(0.1, description="fastText learning rate")
    wordNgrams: int = Field(2, description="fastText word n-gram features (bigrams, as DCLM)")
    dim: int = Field(32, description="fastText embedding size (small keeps the model a few MB)")
    bucket: int = Field(100_000, description="fastText hash buckets for n-grams (its default 2M "
                        "makes every model ~800 MB at dim 100)")
    minCount: int = Field(1, description="fastText: words seen fewer times are ignored")
    thread: int = Field(1, description="fastText training threads; 1 makes training "
                        "deterministic for a given seed, raise it on a big machine")
    seed: int = Field(0, description="seed of the class sampling and of fastText")

    # Scoring
    threshold: float = Field(0.5, description="keep documents with P(hq) >= threshold (also the "
                             "threshold of the held-out metrics)")
    keep_fraction: float | None = Field(
        None, description="keep this top fraction by score instead of a fixed threshold (DCLM: "
        "0.1); overrides threshold when set")
    batch_rows: int = Field(1_000, description="documents scored per batch")


def default_positives() -> list[str]:
    """The GSM8K train split of the benchmark mirror (never the test split)."""
    root = benchmarks_dir()
    path = root / "gsm8k" / "train.jsonl" if root else None
    if path is None or not path.is_file():
        raise MissingInputError(
            "no reference text for the quality classifier: set the `positives` option "
            "(--positives FILE: Parquet with `text`, JSONL with `text` or `question`/`answer`, or "
            ".txt), or provide the GSM8K mirror (gsm8k/train.jsonl under LMFORGE_BENCHMARKS_DIR)")
    return [str(path)]


def _examples(texts: Iterable[str], cfg: QualityConfig) -> Iterator[str]:
    for text in texts:
        line = fasttext_line(text, cfg.max_chars)
        if len(line.split()) >= cfg.min_words:
            yield line


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class QualityModelStats:
    positives: list[str] = field(default_factory=list)
    positives_read: int = 0  # usable positive examples seen (before sampling)
    negatives_read: int = 0
    examples_per_class: int = 0
    train_examples: int = 0
    heldout_examples: int = 0
    heldout: dict[str, float] = field(default_factory=dict)  # metrics at cfg.threshold
    vocabulary: int = 0
    model_bytes: int = 0
    seconds: float = 0.0

    def to_metadata(self) -> dict[str, Any]:
        return {
            "positives": self.positives,
            "positives_read": self.positives_read,
            "negatives_read": self.negatives_read,
            "examples_per_class": self.examples_per_class,
            "train_examples": self.train_examples,
            "heldout_examples": self.heldout_examples,
            **{f"heldout_{k}": v for k, v in self.heldout.items()},
            "vocabulary": self.vocabulary,
            "model_mb": round(self.model_bytes / 2**20, 2),
            "seconds": round(self.seconds, 3),
        }


# Training runs in a fresh Python process. In one process, a second fastText training after a
# model was freed is not reproducible and often stops with "Encountered NaN" (fasttext-numpy2
# 0.10.4, measured: the same data and seed gave 1-5 different models in 10 runs, and up to 10/10
# NaN failures); the first training of a process is deterministic. A child process also keeps
# fastText's memory out of a long-lived Dagster or test process.
_TRAIN_CHILD = """
import json, sys
import fasttext
args = json.loads(sys.argv[1])
out = args.pop("output")
try:
    model = fasttext.train_supervised(**args)
except RuntimeError as e:
    sys.exit(str(e))
model.save_model(out)
"""


def _train_fasttext(lines: list[str], cfg: QualityConfig, model_path: Path) -> None:
    """Train on ``lines`` (``__label__x text``) and save the model at ``model_path``."""
    with tempfile.TemporaryDirectory(prefix="lmforge-quality-") as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        args = dict(input=str(train_file), output=str(model_path), lr=cfg.lr, epoch=cfg.epoch,
                    wordNgrams=cfg.wordNgrams, dim=cfg.dim, bucket=cfg.bucket,
                    minCount=cfg.minCount, thread=cfg.thread, seed=cfg.seed, loss="softmax",
                    verbose=0)
        proc = subprocess.run([sys.executable, "-c", _TRAIN_CHILD, json.dumps(args)],
                              capture_output=True, text=True)
    if proc.returncode != 0 or not model_path.is_file():
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if "NaN" in err:
            raise RuntimeError(f"fastText training diverged ({err.strip()}): lower lr "
                               f"(it is {cfg.lr})")
        raise RuntimeError(f"fastText training failed: {err}")


_models: dict[str, tuple[tuple, Any]] = {}


def _load_fasttext(bin_path: Path):
    """A fastText model, validated and loaded once per process (reloaded when the file changes):
    a damaged file is a one-line error, never a crash of fastText's loader."""
    path, st = str(bin_path.resolve()), bin_path.stat()
    version = (st.st_mtime_ns, st.st_size)
    if path not in _models or _models[path][0] != version:
        _models[path] = (version, load_fasttext_model(bin_path, "quality model"))
    return _models[path][1]


def predict_hq(model, lines: list[str]) -> np.ndarray:
    """P(hq) of each fastText line (0.0 for an empty one)."""
    import numpy as np

    out = np.zeros(len(lines), dtype=np.float32)
    todo = [i for i, line in enumerate(lines) if line]
    if todo:
        labels, probs = model.predict([lines[i] for i in todo], k=2)
        for i, labs, ps in zip(todo, labels, probs):
            p = dict(zip(labs, ps)).get(HQ, 0.0)
            out[i] = min(max(float(p), 0.0), 1.0)  # fastText adds 1e-5 to every probability
    return out


def train_quality_classifier(negatives_path, out_dir, cfg: QualityConfig | None = None
                             ) -> QualityModelStats:
    """Train the hq-vs-crawl classifier; write ``out_dir/quality.bin`` and ``quality.json``."""
    import numpy as np

    cfg = cfg or QualityConfig()
    if not 0.0 < cfg.holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be in (0, 1), got {cfg.holdout_fraction}")
    if not 0.0 <= cfg.threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {cfg.threshold}")
    # The model directory is written in place (two files): refuse one lmforge did not make, or a
    # read-only place, before reading anything.
    check_output(out_dir, "dir")
    input_schema(negatives_path, required=("text",))
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)
    positives = list(cfg.positives) or default_positives()
    stats = QualityModelStats(positives=positives)

    def all_positives() -> Iterator[str]:
        for src in positives:
            yield from read_texts(src, cfg.min_words)

    def crawl() -> Iterator[str]:
        input_schema(negatives_path, required=("text",))
        for i, row in enumerate(read_parquet_rows(negatives_path, columns=["text"])):
            if cfg.negatives_limit is not None and i >= cfg.negatives_limit:
                return
            yield row["text"] or ""

    pos, stats.positives_read = _sample(_examples(all_positives(), cfg), cfg.max_examples_per_class, rng)
    neg, stats.negatives_read = _sample(_examples(crawl(), cfg), cfg.max_examples_per_class, rng)
    n = min(len(pos), len(neg))
    if n < 5:
        raise InputError(f"too little data for the quality classifier: {len(pos)} positive and "
                         f"{len(neg)} negative examples of {cfg.min_words}+ words (need 5 each)")
    rng.shuffle(pos)
    rng.shuffle(neg)
    pos, neg = pos[:n], neg[:n]  # balanced, as in DCLM
    n_held = max(1, round(n * cfg.holdout_fraction))
    train = [f"{HQ} {x}" for x in pos[n_held:]] + [f"{LQ} {x}" for x in neg[n_held:]]
    rng.shuffle(train)  # fastText reads the file in order: interleave the classes
    held_lines = pos[:n_held] + neg[:n_held]
    held_is_hq = np.array([True] * n_held + [False] * n_held)
    print(f"quality: training on {len(train)} examples ({n - n_held} per class), "
          f"{2 * n_held} held out", file=sys.stderr)

    out_dir = Path(out_dir)
    made_dir = not out_dir.exists()
    claim_output_dir(out_dir)
    try:
        with atomic_path(out_dir / MODEL_FILE) as tmp:
            _train_fasttext(train, cfg, tmp)
    except BaseException:
        if made_dir:  # a failed first training leaves no empty model directory behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    model = _load_fasttext(out_dir / MODEL_FILE)
    stats.examples_per_class = n
    stats.train_examples = len(train)
    stats.heldout_examples = 2 * n_held
    stats.heldout = binary_metrics(predict_hq(model, held_lines), held_is_hq, cfg.threshold)
    stats.vocabulary = len(model.words)

    stats.model_bytes = (out_dir / MODEL_FILE).stat().st_size
    stats.seconds = time.perf_counter() - t0
    # Written last: a directory with quality.json holds a complete model.
    write_json(out_dir / META_FILE, {"format": FORMAT, "labels": {"positive": HQ, "negative": LQ},
                                     "config": cfg.model_dump(), "stats": stats.to_metadata()})
    return stats


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class QualityStats:
    input_documents: int = 0
    kept_documents: int = 0
    threshold: float = 0.5  # the one applied (from keep_fraction when that was set)
    keep_fraction: float | None = None
    scores: array = field(default_factory=lambda: array("f"))  # every document's P(hq)
    seconds: float = 0.0

    @property
    def removed_documents(self) -> int:
        return self.input_documents - self.kept_documents

    def to_metadata(self) -> dict[str, Any]:
        import numpy as np

        s = np.frombuffer(self.scores, dtype=np.float32) if len(self.scores) else np.zeros(0)
        counts, _ = np.histogram(s, bins=10, range=(0.0, 1.0))
        deciles = np.quantile(s, np.arange(1, 10) / 10) if len(s) else np.zeros(9)
        return {
            "input_documents": self.input_documents,
            "kept_documents": self.kept_documents,
            "removed_documents": self.removed_documents,
            "removed_by_reason": {"quality": self.removed_documents} if self.removed_documents else {},
            "keep_rate": round(self.kept_documents / self.input_documents, 4)
            if self.input_documents else 0.0,
            "threshold": round(float(self.threshold), 4),
            "keep_fraction": self.keep_fraction,
            "mean_score": round(float(s.mean()), 4) if len(s) else 0.0,
            # documents per score bin [0, 0.1), ..., [0.9, 1.0]
            "score_histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": int(c)
                                for i, c in enumerate(counts)},
            # the 10th, 20th, ..., 90th percentile of the scores
            "score_deciles": {f"p{10 * (i + 1)}": round(float(d), 4) for i, d in enumerate(deciles)},
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(self.input_documents / self.seconds, 1)
            if self.seconds else 0.0,
        }


def load_quality_model(model_dir) -> tuple[Any, dict]:
    """(fastText model, quality.json) of a trained model directory, loaded once per process."""
    model_dir = Path(model_dir)
    meta_path, bin_path = model_dir / META_FILE, model_dir / MODEL_FILE
    if not model_dir.is_dir():
        raise MissingInputError(f"no quality model directory at {model_dir} (train one with "
                                "`lmforge quality train`)")
    if not meta_path.is_file() or not bin_path.is_file():
        raise MissingInputError(f"no quality model in {model_dir} (expected {MODEL_FILE} and "
                                f"{META_FILE}; train one with `lmforge quality train`)")
    try:
        meta = read_json(meta_path)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{meta_path}: not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{meta_path}: model format {got} is not {FORMAT}; retrain it")
    try:
        max_chars = int(meta["config"]["max_chars"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{meta_path}: no config.max_chars; retrain the model") from None
    if max_chars < 1:
        raise InputError(f"{meta_path}: config.max_chars is {max_chars}; retrain the model")
    return _load_fasttext(bin_path), meta


def _scores(in_path, model, max_chars: int, batch_rows: int) -> Iterator[tuple[list[dict], np.ndarray]]:
    batch: list[dict] = []
    for row in read_parquet_rows(in_path):
        batch.append(row)
        if len(batch) >= batch_rows:
            yield batch, predict_hq(model, [fasttext_line(r["text"], max_chars) for r in batch])
            batch = []
    if batch:
        yield batch, predict_hq(model, [fasttext_line(r["text"], max_chars) for r in batch])


def score_documents(in_path, out_path, removed_path, model_dir,
                    cfg: QualityConfig | None = None) -> QualityStats:
    """Score every document of ``in_path`` with P(hq); keep those at or above the threshold (or
    the top ``keep_fraction``) in ``out_path``, the rest in ``removed_path`` with reason
    ``quality``. Both outputs get the ``quality`` column."""
    import numpy as np
    import pyarrow as pa

    cfg = cfg or QualityConfig()
    if not 0.0 <= cfg.threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {cfg.threshold}")
    if cfg.keep_fraction is not None and not 0.0 < cfg.keep_fraction <= 1.0:
        raise InputError(f"keep_fraction must be in (0, 1], got {cfg.keep_fraction}")
    check_outputs(out_path, removed_path, inputs=(in_path,))
    schema = input_schema(in_path)
    model, meta = load_quality_model(model_dir)
    max_chars = int(meta["config"]["max_chars"])  # the model's own view of a document
    kept_schema = extend_schema(schema, [("quality", pa.float32())])
    removed_schema = extend_schema(kept_schema, [("reason", pa.string())])
    stats = QualityStats(threshold=cfg.threshold, keep_fraction=cfg.keep_fraction)
    t0 = time.perf_counter()

    cached: np.ndarray | None = None
    if cfg.keep_fraction is not None:
        # First pass: the score at the (1 - keep_fraction) quantile is the threshold. Scores are
        # remembered (4 bytes a document), so the second pass only reads and writes.
        parts = [s for _, s in _scores(in_path, model, max_chars, cfg.batch_rows)]
        cached = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(cached):
            k = max(1, int(round(cfg.keep_fraction * len(cached))))
            stats.threshold = float(np.sort(cached)[::-1][k - 1])

    with open_sinks(out_path, kept_schema, removed_path, removed_schema) as (kept, removed):
        for batch, scores in _scores(in_path, model, max_chars, cfg.batch_rows) if cached is None \
                else _cached(in_path, cached, cfg.batch_rows):
            for row, score in zip(batch, scores):
                row["quality"] = float(score)
                stats.scores.append(float(score))
                if score >= stats.threshold:
                    kept.write(row)
                    stats.kept_documents += 1
                else:
                    removed.write({**row, "reason": "quality"})
            stats.input_documents += len(batch)
            print(f"quality: {stats.input_documents} documents, {stats.kept_documents} kept",
                  file=sys.stderr)
    stats.seconds = time.perf_counter() - t0
    return stats


def score_part(in_path, out_path, removed_path, cfg: QualityConfig, model_dir) -> QualityStats:
    """One shard of :func:`score_sharded`: :func:`score_documents` with the arguments in the
    order every stage's shard takes them."""
    return score_documents(in_path, out_path, removed_path, model_dir, cfg)


def part_scores(task: tuple[str, str, int]) -> np.ndarray:
    """Every score of one part (the first pass of ``keep_fraction`` over a day's parts)."""
    import numpy as np

    in_path, model_dir, batch_rows = task
    model, meta = load_quality_model(model_dir)
    parts = [s for _, s in _scores(in_path, model, int(meta["config"]["max_chars"]), batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def score_sharded(in_path, out_path, removed_path, model_dir, cfg: QualityConfig,
                  parallel=None) -> QualityStats:
    """:func:`score_documents` over every part of ``in_path`` as ``parallel`` says (see
    ``lmforge.curate.stages.run_sharded``). With ``keep_fraction``, a first pass scores every
    part and the day's threshold is the one a single pass over the whole day would set."""
    import numpy as np

    from lmforge.curate.parallel import parallel_session, run_tasks
    from lmforge.curate.stages import file_identity, is_parts_output, run_sharded
    from lmforge.io import parquet_files

    if not is_parts_output(out_path):
        return run_sharded(__name__, "score_part", in_path, out_path, removed_path, cfg,
                           parallel, args=(str(model_dir),), name="quality")
    load_quality_model(model_dir)  # a missing or bad model fails here, before any shard
    applied = cfg
    with parallel_session(parallel):  # one pool or cluster for both passes
        if cfg.keep_fraction is not None:
            scores = run_tasks(part_scores, [(str(f), str(model_dir), cfg.batch_rows)
                                             for f in parquet_files(in_path)],
                               parallel, desc="quality scores", label=lambda t: Path(t[0]).name)
            cached = np.concatenate(scores)
            threshold = cfg.threshold
            if len(cached):
                k = max(1, int(round(cfg.keep_fraction * len(cached))))
                threshold = float(np.sort(cached)[::-1][k - 1])
            applied = cfg.model_copy(update={"keep_fraction": None, "threshold": threshold})
        stats = run_sharded(__name__, "score_part", in_path, out_path, removed_path, applied,
                            parallel, args=(str(model_dir),), name="quality",
                            merge="merge_part_stats",
                            extra_fingerprint=[file_identity(Path(model_dir) / MODEL_FILE)])
    stats.keep_fraction = cfg.keep_fraction
    return stats


def merge_part_stats(parts: list[dict[str, Any]], seconds: float, cfg: QualityConfig
                     ) -> QualityStats:
    """The stats of a day from its parts' (as :func:`score_documents` returned them, in JSON)."""
    stats = QualityStats(threshold=cfg.threshold, keep_fraction=cfg.keep_fraction,
                         seconds=seconds)
    for part in parts:
        stats.input_documents += part["input_documents"]
        stats.kept_documents += part["kept_documents"]
        stats.scores.extend(part["scores"])
    return stats


def _cached(in_path, scores: np.ndarray, batch_rows: int) -> Iterator[tuple[list[dict], np.ndarray]]:
    batch: list[dict] = []
    i = 0
    for row in read_parquet_rows(in_path):
        batch.append(row)
        if len(batch) >= batch_rows:
            yield batch, scores[i:i + len(batch)]
            i += len(batch)
            batch = []
    if batch:
        yield batch, scores[i:i + len(batch)]


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lmforge quality",
        description="DCLM-style fastText quality classifier: train it on reference text "
                    "(positives) against raw crawl documents (negatives), then score documents "
                    "and keep those that look like the reference.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the classifier",
                       description="Train quality.bin (+ quality.json with held-out metrics).")
    t.add_argument("negatives", help="raw crawl documents Parquet (column text): the negatives")
    t.add_argument("out_dir", help="model directory to write quality.bin and quality.json into")
    add_config_arguments(t, QualityConfig)
    # Earlier spelling of --wordNgrams, kept for scripts that use it.
    t.add_argument("--word-ngrams", dest="wordNgrams", default=None, help="same as --wordNgrams")

    s = sub.add_parser("score", help="score and filter documents",
                       description="Add a quality column (P(hq)) and remove documents below the "
                                   "threshold with reason `quality`.")
    s.add_argument("input", help="documents: a Parquet file, a day directory (parts and "
                   "_manifest.json) or a directory of them (columns id, url, text)")
    s.add_argument("output", help="kept documents (adds quality): a directory, one part per "
                   "input part (shards run in parallel), or one .parquet file")
    s.add_argument("--model", required=True, help="model directory written by `lmforge quality train`")
    s.add_argument("--removed", help="removed documents Parquet, for a .parquet OUT (default: "
                   "<OUT stem>.removed.parquet; a directory OUT keeps them beside each part)")
    add_config_arguments(s, QualityConfig, exclude=TRAINING_ONLY)
    add_parallel_arguments(s)
    args = p.parse_args(argv)

    try:
        cfg = config_from_args(QualityConfig, args)
        if args.command == "train":
            m = train_quality_classifier(args.negatives, args.out_dir, cfg).to_metadata()
            print(f"quality: {m['examples_per_class']} examples per class; held-out accuracy "
                  f"{m['heldout_accuracy']:.3f}, precision {m['heldout_precision']:.3f}, recall "
                  f"{m['heldout_recall']:.3f}, AUC {m['heldout_auc']:.3f}; {m['seconds']} s",
                  file=sys.stderr)
            print(f"model -> {Path(args.out_dir) / MODEL_FILE}")
        else:
            removed = args.removed or removed_path_for(args.output)
            m = score_sharded(args.input, args.output, removed, args.model, cfg,
                              parallel_from_args(args)).to_metadata()
            print(f"quality: kept {m['kept_documents']}/{m['input_documents']} "
                  f"({m['keep_rate']:.1%}) at P(hq) >= {m['threshold']}; score deciles "
                  f"{list(m['score_deciles'].values())}", file=sys.stderr)
            print(f"kept -> {args.output}\nremoved -> {removed}")
    except (LmforgeError, RuntimeError) as e:
        print(f"lmforge quality: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('quality', main, sys.argv[1:]))
