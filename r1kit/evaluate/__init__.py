"""Evaluation: greedy and sampled accuracy, pass@k and maj@k on held-out problems or shipped benchmarks.

  core.py       evaluate(engine, tokenizer, rows, ...) -> EvalResult; evaluate_across: split over processes
  metrics.py    pass_at_k, maj_at_k, majority_vote: pure functions
  benchmarks.py which rows and answer checker `r1kit eval --benchmark NAME` uses; the summary table
"""

from r1kit.evaluate.core import EvalResult, evaluate, evaluate_across, shows_reasoning, tiny_style_prefills
from r1kit.evaluate.metrics import default_ks, maj_at_k, majority_vote, pass_at_k

__all__ = ["EvalResult", "default_ks", "evaluate", "evaluate_across", "maj_at_k", "majority_vote", "pass_at_k", "shows_reasoning",
           "tiny_style_prefills"]
