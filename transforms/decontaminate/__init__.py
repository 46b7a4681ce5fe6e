"""Decontaminate: the benchmark n-gram index and the rows that overlap it."""
