"""Rare-class chest X-ray synthesis with diffusers: train, sample, classifier-filter, write shards."""
