"""The pipeline's configuration as data: `PipelineConfig` and how files and flags become one."""

from aivd.config.pipeline import (
    CloudConfig,
    ConfigError,
    EdgeConfig,
    ImagingConfig,
    LearnerConfig,
    OffloadConfig,
    OutputsConfig,
    PipelineConfig,
    UpdateConfig,
    build_config,
    dotted,
)

__all__ = [
    "CloudConfig", "ConfigError", "EdgeConfig", "ImagingConfig", "LearnerConfig", "OffloadConfig", "OutputsConfig",
    "PipelineConfig", "UpdateConfig", "build_config", "dotted",
]
