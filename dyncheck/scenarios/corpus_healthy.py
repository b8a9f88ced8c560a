"""Healthy runs of the calibration corpus (registered into dyncheck.scenarios.SCENARIOS)."""
