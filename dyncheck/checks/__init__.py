"""Checks over recorded series (no torch): generic detectors now; rule files and evaluation build on them."""

from .detectors import DETECTORS, Detector, Hit, runs_at_least

__all__ = ["DETECTORS", "Detector", "Hit", "runs_at_least"]
