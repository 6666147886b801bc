"""Containment of strangers' code: what sessions and builds can reach on this machine."""
