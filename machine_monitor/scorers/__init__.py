"""Scorers: how a reconstruction becomes a window or clip score (residual statistics, post-classifiers)."""
