"""Offload: the agent's calibrated cascade (score, decide, ask the cloud, fall back)."""
