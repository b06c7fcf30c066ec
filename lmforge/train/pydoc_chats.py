"""Instruction examples derived from pydoc pages: which module a page documents, its summary,
its functions' signatures and purposes, its classes and its ``__all__``.

The pages are the crawled corpus, the pydoc pages of the local Python documentation server (each
document has ``url``, ``title``, ``text``); nothing is fetched.
Every answer is copied from the page it was derived from, so it can be checked against it. The
module name comes from the title (``Pydoc: module json``), else from the url (``/json.html``),
else from a ``Python Library Documentation: module json`` first line. From each page:

- ``module_summary``: "What does the Python module `X` provide?" -> the first one or two
  sentences of the module's docstring (the first prose paragraph of the page that is not pydoc's
  own boilerplate, a heading, a path, a table row of names or a ``>>>`` example).
- ``signature``: "What is the call signature of `f` in the Python module `X`?" -> the signature
  line ``f(a, b=1, *args)`` as the page prints it. A line counts as a signature only if its
  parameter list parses as Python (``ast``), the name is public, and it is not a method
  (first parameter ``self``/``cls``). At most ``max_per_page`` per page.
- ``function_purpose``: "In the Python module `X`, what does `f` do?" -> the first sentence of
  the docstring printed right after that signature (a capitalised sentence ending in a period).
- ``classes``: "Which classes does the Python module `X` define?" -> the public names of the
  page's ``class Name(...)`` headers, in page order (1 to 20 of them).
- ``exports``: "Which names does the Python module `X` export in `__all__`?" -> the page's
  ``__all__ = [...]`` list, when it parses completely (pydoc truncates long reprs with ``...``).

``sft_data.sft_data_from_documents`` writes these examples as a chat JSONL file.
"""

from __future__ import annotations

import ast
import random
import re
from urllib.parse import urlparse

_TITLE_MODULE = re.compile(r"(?:Pydoc|Python):\s*(?:built-in\s+)?(?:module|package)\s+([A-Za-z_][\w.]*)")
_FIRST_LINE_MODULE = re.compile(r"Python Library Documentation:\s*(?:built-in\s+)?(?:module|package)\s+([A-Za-z_][\w.]*)")
_URL_MODULE = re.compile(r"^/?([A-Za-z_][\w.]*)\.html$")
# pydoc's own text, headings and navigation, which are not the module's description
_BOILERPLATE = ("Python Library Documentation", "automatically generated", "Module Reference",
                "docs.python.org", "Module Index", "MODULE REFERENCE", "/lib/python", "index.html",
                "Method resolution order", "Methods defined here", "Data descriptors defined here")
# Section headings of a pydoc page (plain text in capitals, HTML in title case). The module's
# description comes before the first of them; after it, prose belongs to functions and classes.
_SECTIONS = {"classes", "functions", "data", "modules", "package contents", "submodules",
             "file", "version", "author", "credits", "date"}
_PLATFORM_LINE = re.compile(r"^Python \d+\.\d+\.\d+ \[")  # the pydoc server's header line
_SIGNATURE_START = re.compile(r"(?:^|(?<=\| )|(?<=\. ))([A-Za-z_][A-Za-z0-9_]*)\(")
# A sentence ends at . ! or ? before a capital, a quote, a list dash or the next signature.
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[-A-Z(`\"']|[A-Za-z_]\w*\()")
_STARTS_WITH_CALL = re.compile(r"^[A-Za-z_][\w.]*\(")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def module_name(doc: dict) -> str | None:
    """The module a pydoc page documents, from its title, url or first line."""
    m = _TITLE_MODULE.search(doc.get("title") or "")
    if m:
        return m.group(1)
    path = urlparse(doc.get("url") or "").path
    m = _URL_MODULE.match(path.rsplit("/", 1)[-1]) if path else None
    if m and m.group(1) not in ("index", "topics", "keywords", "search"):
        return m.group(1)
    m = _FIRST_LINE_MODULE.search((doc.get("text") or "")[:300])
    return m.group(1) if m else None


def _is_prose(line: str) -> bool:
    """A line of running text: starts with a letter, has a few words, is no heading or table row."""
    s = line.strip()
    if not s or s.startswith(("|", ">>>", "...", "$", "#")) or " | " in s or any(b in s for b in _BOILERPLATE):
        return False
    if _PLATFORM_LINE.match(s):
        return False
    if s.isupper() or not (s[0].isalpha() or s[0] in "`:(") or _STARTS_WITH_CALL.match(s):
        return False
    return len(s.split()) >= 3


def _is_section_heading(line: str) -> bool:
    """"CLASSES", "Functions", or a table row whose first cell is one ("| Data |  |")."""
    cells = [c.strip() for c in line.split("|") if c.strip()]
    return len(cells) == 1 and cells[0].lower() in _SECTIONS


def module_summary(text: str, name: str) -> str | None:
    """The first one or two sentences of the first prose paragraph on the page."""
    lines = text.splitlines()
    start, in_boilerplate = None, False
    for i, line in enumerate(lines):
        if _is_section_heading(line):
            return None
        # pydoc's "The following documentation is automatically generated ..." spans lines:
        # skip the rest of a paragraph that contains boilerplate.
        if any(b in line for b in _BOILERPLATE):
            in_boilerplate = True
        elif not line.strip():
            in_boilerplate = False
        elif line.strip().startswith(f"{name} (version"):  # the page heading: "smtpd (version 0.3)"
            continue
        elif not in_boilerplate and _is_prose(line):
            start = i
            break
    if start is None:
        return None
    para: list[str] = []
    for line in lines[start:start + 12]:
        if not _is_prose(line) or line.strip().endswith("::"):
            break
        para.append(line.strip())
    paragraph = " ".join(para)
    # pydoc's plain-text NAME section reads "json - JSON (JavaScript ...": drop the "json - ".
    paragraph = re.sub(rf"^{re.escape(name)}\s+-\s+", "", paragraph)
    sentences = _SENTENCE_END.split(paragraph)
    summary = sentences[0]
    if len(summary) < 60 and len(sentences) > 1:
        summary += " " + sentences[1]
    summary = summary.strip()
    if len(summary) < 15 or len(summary) > 500 or not summary[-1] in ".!?:)":
        return None
    return summary


def _balanced_call(s: str, start: int) -> int | None:
    """Index just past the ')' that closes the '(' at ``start``, honouring quotes."""
    depth, quote = 0, None
    for i in range(start, len(s)):
        c = s[i]
        if quote:
            if c == quote and s[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def find_signatures(text: str) -> list[tuple[str, str, str]]:
    """(name, signature, first docstring sentence or '') of the public functions on the page."""
    found: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip().lstrip("| \t")
        # A signature opens a line, or (where an extractor joined a table's rows into one line)
        # follows a cell border "| " or the end of the previous docstring's sentence ". ".
        for m in _SIGNATURE_START.finditer(line):
            name = m.group(1)
            if name in seen or name.startswith("_") or name == "class":
                continue
            entry = _signature_at(line, m, lines[i + 1:i + 4])
            if entry:
                seen.add(name)
                found.append(entry)
    return found


def _signature_at(line: str, m: re.Match, following: list[str]) -> tuple[str, str, str] | None:
    """The (name, signature, purpose) whose name ``m`` matched, or None if it is no signature."""
    name = m.group(1)
    end = _balanced_call(line, m.end() - 1)
    if end is None:
        return None
    params = line[m.end():end - 1]
    try:  # the strongest filter: the parameter list must be valid Python
        fn = ast.parse(f"def {name}({params}): pass").body[0]
    except (SyntaxError, ValueError):
        return None
    first = [a.arg for a in fn.args.posonlyargs + fn.args.args][:1]
    if first in (["self"], ["cls"]):
        return None
    rest = line[end:].strip(" |\t")
    if rest and not rest[0].isupper():  # a call inside a sentence or an example, not a heading
        return None
    if not rest:  # the docstring starts on the next non-empty line
        rest = next((x.strip().lstrip("| \t") for x in following if x.strip(" |\t")), "")
    sentence = _SENTENCE_END.split(rest.strip())[0] if rest else ""
    purpose = ""
    if (sentence[:1].isupper() and sentence.endswith(".") and 3 <= len(sentence.split()) <= 40
            and ">>>" not in sentence and _is_prose(sentence)):
        purpose = sentence
    return name, f"{name}({params})", purpose


_CLASS_HEADER = re.compile(r"^[|\s]*class\s+([A-Za-z_]\w*)\s*[(:]")
_ALL_LINE = re.compile(r"__all__\s*=\s*(\[.*?\])")


def find_classes(text: str) -> list[str]:
    names: list[str] = []
    for line in text.splitlines():
        m = _CLASS_HEADER.match(line)
        if m and not m.group(1).startswith("_") and m.group(1) not in names:
            names.append(m.group(1))
    return names


def find_exports(text: str) -> list[str] | None:
    m = _ALL_LINE.search(text)
    if not m:
        return None
    try:
        names = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None  # truncated by pydoc's repr ("...") or not a literal
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        return None
    return names


def _ask(rng: random.Random, *phrasings: str) -> str:
    return rng.choice(phrasings)


def document_examples(doc: dict, rng: random.Random, max_per_page: int = 3) -> list[tuple[str, list[dict]]]:
    """The (task, messages) examples one pydoc page yields (see the module doc)."""
    name = module_name(doc)
    text = (doc.get("text") or "").replace("\xa0", " ")  # pydoc's HTML is full of &nbsp;
    if not name or not text.strip():
        return []
    out: list[tuple[str, list[dict]]] = []

    def add(task: str, question: str, answer: str) -> None:
        out.append((task, [{"role": "user", "content": question},
                           {"role": "assistant", "content": answer}]))

    summary = module_summary(text, name)
    if summary:
        add("module_summary",
            _ask(rng, f"What does the Python module `{name}` provide?",
                 f"Summarize the purpose of the Python module `{name}`.",
                 f"What is the `{name}` module for?"),
            summary)
    signatures = find_signatures(text)
    for fname, sig, purpose in signatures[:max_per_page]:
        add("signature",
            _ask(rng, f"What is the call signature of `{fname}` in the Python module `{name}`?",
                 f"Give the signature of `{fname}` from the Python module `{name}`."),
            f"`{sig}`")
    purposes = [(f, p) for f, _, p in signatures if p]
    for fname, purpose in purposes[:max_per_page]:
        add("function_purpose",
            _ask(rng, f"In the Python module `{name}`, what does `{fname}` do?",
                 f"Briefly, what does `{name}.{fname}` do?"),
            purpose)
    classes = find_classes(text)
    if 1 <= len(classes) <= 20:
        add("classes", f"Which classes does the Python module `{name}` define?",
            f"`{name}` defines: " + ", ".join(f"`{c}`" for c in classes) + ".")
    exports = find_exports(text)
    if exports and len(exports) <= 60:
        add("exports", f"Which names does the Python module `{name}` export in `__all__`?",
            ", ".join(f"`{x}`" for x in exports) + ".")
    return out


# The kinds of example a page yields, in the order ``document_examples`` produces them.
DOCUMENT_KINDS = ("module_summary", "signature", "function_purpose", "classes", "exports")
