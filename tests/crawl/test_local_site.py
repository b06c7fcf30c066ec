from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from lmforge.crawl.local_site import serve_python_docs


def test_serves_real_documentation_and_stops():
    with serve_python_docs() as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        with urllib.request.urlopen(url + "json.html", timeout=10) as r:
            page = r.read().decode("utf-8")
        assert r.status == 200 and "<title>Pydoc: package json</title>" in page
        assert "JavaScript&nbsp;Object&nbsp;Notation" in page  # the json module's own docstring
        # The standard library only: the server runs without site-packages.
        with urllib.request.urlopen(url, timeout=10) as r:
            index = r.read().decode("utf-8")
        assert 'href="json.html"' in index and 'href="torch.html"' not in index
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
