"""r1kit: teach language models to reason with reinforcement learning on verifiable rewards.

Importing the package imports nothing heavy (no torch): submodules are imported where used.
"""

__version__ = "0.1.0"
