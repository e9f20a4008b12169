"""GRPO math as pure tensor functions: advantages, per-token losses, aggregation, KL. No model inside."""
