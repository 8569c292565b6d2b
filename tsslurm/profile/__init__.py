"""Deployment profiles: typed schema, validation, loading. See schema.py for the tree."""

from tsslurm.profile.load import ProfileError, load_profile, parse_profile, state_dir, template_path
from tsslurm.profile.schema import Partition, Profile, Velocities

__all__ = ["Partition", "Profile", "ProfileError", "Velocities", "load_profile", "parse_profile",
           "state_dir", "template_path"]
