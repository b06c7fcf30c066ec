"""URLs and charsets: normalizing a URL, decoding an HTML body (BOM, Content-Type, <meta>), finding
its links, telling HTML from other bytes, and which hosts a crawl may visit."""

from __future__ import annotations

import codecs
import re
import threading
from typing import Iterable
from urllib.parse import urljoin, urlsplit, urlunsplit



def normalize_url(url: str) -> str:
    """The canonical form the frontier deduplicates on (and document ids are hashed from).

    Lower-case scheme and host, no default port, no fragment, ``/`` for an empty path. Nothing
    else changes: query parameter order and percent-encoding can matter to a server.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname  # lower-cased by urlsplit
    if not host:
        raise ValueError(f"no host in URL: {url!r}")
    port = parts.port  # raises ValueError on a bad port
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    netloc = host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


def detect_charset(body: bytes, content_type: str | None = None) -> str | None:
    """The encoding a page declares: byte-order mark, then HTTP header, then ``<meta>``.

    None when it declares none, or names one Python does not know. Same order as the WHATWG
    encoding sniffing algorithm, without the statistical guessing.
    """
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name
    candidates = []
    if content_type:
        m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.I)
        if m:
            candidates.append(m.group(1))
    m = _META_CHARSET.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii", "ignore"))
    for name in candidates:
        try:
            return codecs.lookup(name).name
        except LookupError:
            continue
    return None


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str, int]:
    """Decode a page: ``(text, encoding, number of undecodable bytes replaced)``.

    Declared charset first; with none, UTF-8 if the bytes are valid UTF-8, else windows-1252 (the
    web's historical default). Never raises: bad bytes become U+FFFD and are counted, so callers
    decide how much damage they accept.
    """
    declared = detect_charset(body, content_type)
    if declared is None:
        try:
            return body.decode("utf-8"), "utf-8", 0
        except UnicodeDecodeError:
            declared = "cp1252"
    if declared.startswith("utf-8") and body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8):]
    try:
        return body.decode(declared), declared, 0
    except UnicodeDecodeError:
        _bad_bytes.n = 0
        text = body.decode(declared, errors=_COUNTING_ERRORS)
        return text, declared, _bad_bytes.n


# An error handler that replaces like "replace" and counts the bytes it replaced (per thread).
_COUNTING_ERRORS = "lmforge-count-replace"
_bad_bytes = threading.local()


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    _bad_bytes.n = getattr(_bad_bytes, "n", 0) + (err.end - err.start)
    return "\ufffd", err.end


codecs.register_error(_COUNTING_ERRORS, _count_and_replace)


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_BASE_HREF = re.compile(rb"""<base\s[^>]*href\s*=\s*["']([^"']+)["']""", re.I)


def extract_links(body: bytes, base_url: str, content_type: str | None = None) -> list[str]:
    """Normalized absolute http(s) URLs of ``<a>``, ``<area>``, ``<frame>`` and ``<iframe>``."""
    import lxml.html  # trafilatura's dependency; imported here so the module loads fast

    if not body.strip():
        return []
    text, _, _ = decode_html(body, content_type)
    # lxml refuses a str that still declares its byte encoding (XHTML's <?xml ... ?>).
    text = _XML_DECLARATION.sub("", text, count=1)
    try:
        doc = lxml.html.document_fromstring(text)
    except (ValueError, lxml.etree.ParserError):
        return []
    base = base_url
    m = _BASE_HREF.search(body[:8192])
    if m:
        base = urljoin(base_url, m.group(1).decode("ascii", "ignore"))
    links, seen = [], set()
    for href in doc.xpath("//a/@href | //area/@href | //frame/@src | //iframe/@src"):
        href = str(href).strip()
        if not href or href.startswith(("#", "javascript:", "mailto:", "data:")):
            continue
        try:
            url = normalize_url(urljoin(base, href))
        except ValueError:
            continue
        if url not in seen:
            seen.add(url)
            links.append(url)
    return links


def looks_like_html(body: bytes) -> bool:
    """Sniff a body sent without Content-Type the way browsers do: by its first tag."""
    head = body[:1024].lstrip().lower()
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):].lstrip()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def host_allowed(url: str, domains: Iterable[str]) -> bool:
    host = urlsplit(url).hostname or ""
    return any(host == d or host.endswith("." + d) for d in domains)
