"""Instruction conversion with any OpenAI-compatible LLM: passages, prompts, client, cache, checks."""
