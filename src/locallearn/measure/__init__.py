"""Measurement: memory, hardware description, timing."""

from locallearn.measure.hardware import hardware_info
from locallearn.measure.memory import MemoryMeter, peak_rss_bytes

__all__ = ["MemoryMeter", "hardware_info", "peak_rss_bytes"]
