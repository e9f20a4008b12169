"""Data: prompt templates, answer extraction, dataset sources and the built-in procedural task."""
