"""Shared fixtures and Hypothesis profiles.

Profiles: ``ci`` (default: bounded, deterministic, seeded) and ``thorough`` (10x the examples),
chosen with ``DURAJOBS_HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # helpers: faultvfs, ...

settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("DURAJOBS_HYPOTHESIS_PROFILE", "ci"))
