"""Dedup: exact keys, MinHash signatures, clusters, repeated paragraphs, the persistent index, and the stage."""
