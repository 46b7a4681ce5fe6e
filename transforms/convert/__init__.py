"""Convert: documents become conversations by templates, an LLM (llm/), or pass through as native dialogue."""
