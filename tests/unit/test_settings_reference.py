"""docs/configuration.md is what scripts/settings_reference.py writes from the settings classes
now: a setting added, removed or redocumented without regenerating it fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/settings_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_of_every_service_is_in_the_reference() -> None:
    """Whatever the generator walks, each service's every field (its own and inherited) has a
    row: the reference is complete."""
    from bindery.archiver.settings import ArchiverSettings
    from bindery.builder.settings import BuilderSettings
    from bindery.culler.settings import CullerSettings
    from bindery.gateway.settings import GatewaySettings
    from bindery.resolver.settings import ResolverSettings
    from bindery.scheduler.settings import SchedulerSettings

    text = (REPO / "docs/configuration.md").read_text()
    services = (
        ResolverSettings,
        BuilderSettings,
        SchedulerSettings,
        CullerSettings,
        ArchiverSettings,
        GatewaySettings,
    )
    missing = [
        f"{cls.__name__}.{name}"
        for cls in services
        for name in cls.model_fields
        if f"| `BINDERY_{name.upper()}` |" not in text
    ]
    assert not missing
