"""Servers that let the trainer's parts run on other GPUs or nodes: generation (vLLM) and the reference model.

serve/generation.py   `r1kit serve-gen MODEL`: vLLM's OpenAI-compatible server plus a weight-update route
serve/reference.py    `r1kit serve-ref MODEL`: per-token reference logprobs for given prompt/completion ids
Their clients live with the interfaces they implement: r1kit/rollout/remote.py and r1kit/reference.py.
"""
