"""Deployment helpers for facematch: building and checking the model weights."""
