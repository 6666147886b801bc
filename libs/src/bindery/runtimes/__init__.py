"""Runtimes: where sessions run, behind one interface."""

from bindery.runtimes.base import Limits, Runtime, RuntimeError_, Session, SessionSpec
from bindery.runtimes.podman import PodmanRuntime

__all__ = ["Limits", "PodmanRuntime", "Runtime", "RuntimeError_", "Session", "SessionSpec"]
