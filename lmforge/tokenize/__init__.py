"""Tokenizer training and memory-mapped token shards."""
