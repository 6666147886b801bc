"""Bindery's builder service: turns a repository at a commit, or a data repository's record
(Zenodo, Figshare, Dataverse, HydroShare, CKAN, Software Heritage), into a pushed image.

In: ref-resolved events for images the registry lacks. Out: build-started, build-log lines,
image-built or launch-failed. ``coordinator`` holds the domain (one build per image, joins,
build slots, the events); ``buildprocess`` runs one build process per build and reads its output
(timeout, cgroup, cleanup), handing it a ``job`` (one validated model of the request and this
host's build options). Inside that process (``buildchild``) the build is repo2docker, run as a
library on podman (``engine``) with Bindery's own buildpacks (``buildpacks``, one module a
pack) on the shared local base image (``baseimage``); what is fetched, and from where, is
checked per provider (``sources``) and fetched by repo2docker's content providers
(``datarepos``).
"""
