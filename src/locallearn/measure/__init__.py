"""Measurement: memory, hardware description, timing."""

from locallearn.measure.hardware import hardware_info
from locallearn.measure.memory import (
    SavedTensorMeter,
    measure_step_memory,
    measure_training_memory,
    meter_active,
    peak_rss_bytes,
    state_bytes,
)

__all__ = ["SavedTensorMeter", "hardware_info", "measure_step_memory",
           "measure_training_memory", "meter_active", "peak_rss_bytes", "state_bytes"]
