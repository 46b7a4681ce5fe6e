"""Ingest: files and datasets read by the importers (with their encodings), documents extracted from crawled pages."""
