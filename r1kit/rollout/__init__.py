"""Rollout engines: turn prompts into sampled completions with per-token logprobs."""
