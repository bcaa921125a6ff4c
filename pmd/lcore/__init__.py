"""Logical cores: pinned worker threads that run one compiled loop each."""
from .launch import LcoreBusy, LcoreError, LcoreManager

__all__ = ["LcoreBusy", "LcoreError", "LcoreManager"]
