"""Paceline: a curriculum and reward-weighting service for RL post-training."""

__version__ = "0.1.0"
