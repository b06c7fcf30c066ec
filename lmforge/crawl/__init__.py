"""Crawling: a polite HTTP crawler that writes WARC, and the offline demo web."""
