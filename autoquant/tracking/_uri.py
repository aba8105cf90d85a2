"""Where a study's MLflow runs go: the tracking URI, where it was set, whether its server
answers, and where the artifacts of a database store are kept."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autoquant.config import StudyConfig
from autoquant.errors import ConfigError
from autoquant.names import MLFLOW_ARTIFACTS_DIR, MLFLOW_DB_FILE

_TIMEOUT_S = 5.0


def tracking_uri(config: StudyConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the output folder."""
    default = f"sqlite:///{config.output.directory / MLFLOW_DB_FILE}"
    return config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default


def uri_origin(config: StudyConfig) -> str:
    """Where `tracking_uri` comes from, for messages: the config key or the environment variable."""
    if config.tracking.uri or not os.environ.get("MLFLOW_TRACKING_URI"):
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI"


def check_reachable(uri: str, origin: str = "tracking.uri") -> None:
    """Fail fast when an ``http(s)://`` tracking server does not answer its health check.

    Args:
        uri: The tracking URI.
        origin: Where the URI was set (``tracking.uri`` or ``MLFLOW_TRACKING_URI``), for the message.

    Raises:
        ConfigError: The server cannot be reached within a few seconds.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise ConfigError(
        f"{origin} {uri}: the MLflow tracking server does not answer ({reason}); start it with "
        f"`mlflow server`, fix {origin}, or set tracking: {{enabled: false}}"
    )


def artifact_location(uri: str, config: StudyConfig) -> str | None:
    """Where a new experiment keeps its artifacts: None (the store's default) for a tracking
    server; beside the database for SQLite, in the output folder for another database, never in
    the working folder."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / MLFLOW_ARTIFACTS_DIR).resolve().as_uri()
    if "://" in uri and not uri.startswith(("http://", "https://", "databricks")):
        return (config.output.directory / MLFLOW_ARTIFACTS_DIR).resolve().as_uri()
    return None


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri``, then restore it and ``$MLFLOW_TRACKING_URI``.

    ``mlflow.set_tracking_uri`` also writes the environment variable, which `tracking_uri`
    reads: without the restore, a second study in the same process would log to the wrong store.
    """
    import mlflow

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable
