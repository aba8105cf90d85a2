"""MLflow tracking: the study's parent run and one nested run per trial, logged from a child
process so that the search never waits for MLflow.
"""

from autoquant.tracking._tracker import MlflowTracker, NullTracker, make_tracker

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "make_tracker",
]
