"""Bindery's builder service: turns a repository at a commit into a pushed image.

In: ref-resolved events for images the registry lacks. Out: build-started, build-log lines,
image-built or launch-failed. The build itself is repo2docker, run as a library in one
subprocess per build (``build_one``) on podman (``engine``) with Bindery's own buildpack
(``buildpacks``) on the shared local base image (``baseimage``).
"""
