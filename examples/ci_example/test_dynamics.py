"""A training-dynamics test, as a team would keep in its suite: train the tiny model for 300 steps (under a
second on CPU) and fail when the run is unhealthy or its dynamics regress against the committed baseline
(test_dynamics/test_training_dynamics.dyncheck.yaml).

    pytest examples/ci_example                                   # compare with the baseline
    pytest examples/ci_example --dyncheck-update-baselines       # after an intended change: rewrite it
    pytest examples/ci_example --dyncheck-report-dir reports/ci  # keep the HTML reports of failing tests
"""

from model import train


def test_training_dynamics(dyncheck, tmp_path):
    train(dyncheck.monitor(every_n_steps=10), seed=0, root=tmp_path)
    dyncheck.assert_healthy()          # no error-level finding (NaN, divergence, exploding gradients, ...)
    dyncheck.assert_no_regression()    # losses no worse than the baseline's, no check firing that did not before
