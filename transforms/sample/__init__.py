"""Sample: the priority order, the token counts and the corpus shards."""
