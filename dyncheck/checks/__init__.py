"""Checks over recorded series (no torch): rule files, generic detectors, evaluation into findings."""

from .detectors import DETECTORS, Detector
from .engine import CheckResult, Finding, Skipped, evaluate
from .rules import Check, RuleSet, load_rules

__all__ = ["DETECTORS", "Detector", "Check", "RuleSet", "load_rules", "evaluate", "CheckResult", "Finding",
           "Skipped"]
