"""Detector kinds: the fitted chain from features to a clip / window score and its thresholds."""
