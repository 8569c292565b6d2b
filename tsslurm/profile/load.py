"""Reading a profile from YAML: parse, validate structure and rules, report every problem at once.

This is the only module of the profile package that touches the filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tsslurm.errors import UserError
from tsslurm.profile.rules import check_profile
from tsslurm.profile.schema import Profile
from tsslurm.profile.validate import Problem, convert_collecting

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO_ROOT / "sbatch_templates"
PROFILE_DIR = REPO_ROOT / "profiles"


class ProfileError(UserError):
    """A profile that cannot be used; str() lists every problem with its field path."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid profile {source} ({count}):\n{lines}")


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Load a profile by path, or by name from profiles/ (`local-tiny` -> profiles/local-tiny.yaml)."""
    file = resolve_profile_path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise ProfileError(str(path), [Problem("", f"cannot read: {error.strerror}")]) from None
    return parse_profile(text, source=str(file))


def resolve_profile_path(path: str | os.PathLike[str]) -> Path:
    file = Path(path).expanduser()
    if not file.exists() and not file.suffix and (PROFILE_DIR / f"{file}.yaml").exists():
        return PROFILE_DIR / f"{file}.yaml"
    return file


def parse_profile(text: str, source: str = "<string>") -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ProfileError(source, [Problem("", f"not valid YAML: {error}")]) from None
    profile, problems = convert_collecting(data, Profile)
    if profile is not None:
        problems = check_profile(profile) + _missing_templates(profile)
    if problems:
        raise ProfileError(source, problems)
    return profile


def template_path(name: str) -> Path:
    """An sbatch template by file name (under sbatch_templates/) or by path."""
    candidate = Path(name).expanduser()
    return candidate if candidate.is_absolute() or candidate.exists() else TEMPLATE_DIR / name


def state_dir(profile: Profile) -> Path:
    return Path(profile.state_dir.format(deployment=profile.deployment)).expanduser()


def _missing_templates(profile: Profile) -> list[Problem]:
    return [
        Problem(f"partitions[{i}].template", f"no sbatch template at {template_path(p.template)}")
        for i, p in enumerate(profile.partitions)
        if not template_path(p.template).is_file()
    ]
