"""Dagster resources: the environment a run executes in (storage, launcher, services)."""

from resources.config import dagster_config, engine_config
from resources.launcher import TrainingLauncher
from resources.store import ArtifactStore

__all__ = ["ArtifactStore", "TrainingLauncher", "dagster_config", "engine_config"]
