"""Measurement tools for facematch: LFW accuracy and threshold choice, latency, load."""
