"""The filter's rules, each a pure function of one document's text: Gopher's quality heuristics
(Rae et al. 2021, appendix A), Gopher's repetition bounds, the URL blocklist, C4's line filters
(Raffel et al. 2020) and PII masking. ``lmforge.curate.filter`` runs them in that order.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from lmforge.curate.filter_config import FilterConfig, FilterStats
from lmforge.curate.text import InputError, MissingInputError

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
