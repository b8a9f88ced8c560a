"""Checks over recorded series (no torch): rule files, generic detectors, evaluation into findings."""

from .detectors import DETECTORS, Detector
