"""Bindery's buildpacks (being split by pack: see base)."""

from bindery.builder.buildpacks.base import (
    BUILDPACKS,
    DEFAULT_BUILDPACK,
    BuildContext,
    BuildWarning,
)

__all__ = ["BUILDPACKS", "DEFAULT_BUILDPACK", "BuildContext", "BuildWarning"]
