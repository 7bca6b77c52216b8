"""Research projects: names, and the rules that assign an incoming file to one.

Every instance belongs to exactly one project (and a study to exactly one). The project is
decided by where the file came from: an S3 bucket/prefix rule, the watched folder's project,
the STOW-RS URL or the caller's default project, and else `default_project`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudpacs.errors import ConfigError

PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # whole string: fullmatch
ALL_PROJECTS = "*"


PROJECT_NAME_RULE = (
    "lower-case letters, digits, '.', '_', '-', at most 64, starting with a letter or digit"
)


def is_project_name(value: object) -> bool:
    """Whether `value` is one valid project name (a string: never a list, a number, "*")."""
    return isinstance(value, str) and PROJECT_NAME.fullmatch(value) is not None


def check_project_name(name: str, what: str = "project") -> str:
    if not is_project_name(name):
        raise ConfigError(f"{what}: {name!r} is not a project name ({PROJECT_NAME_RULE})")
    return name


@dataclass(frozen=True)
class S3Rule:
    bucket: str
    prefix: str
    project: str

    @classmethod
    def parse(cls, text: str) -> S3Rule:
        location, sep, project = text.rpartition("=")
        bucket, _, prefix = location.partition("/")
        if not sep or not bucket:
            raise ConfigError(f"s3_projects: {text!r} is not 'bucket/prefix=project'")
        return cls(bucket, prefix, check_project_name(project.strip(), "s3_projects"))


@dataclass(frozen=True)
class ProjectRules:
    default: str
    folder: str
    importer: str
    s3: tuple[S3Rule, ...] = ()

    @classmethod
    def from_settings(
        cls,
        default: str,
        folder: str | None,
        importer: str | None,
        s3_rules: tuple[str, ...],
    ) -> ProjectRules:
        check_project_name(default, "default_project")
        return cls(
            default=default,
            folder=check_project_name(folder, "folder_project") if folder else default,
            importer=check_project_name(importer, "import_project") if importer else default,
            s3=tuple(S3Rule.parse(rule) for rule in s3_rules),
        )

    def for_s3(self, bucket: str, key: str) -> str:
        """The project of the longest matching bucket/prefix rule, else the default."""
        matching = [r for r in self.s3 if r.bucket == bucket and key.startswith(r.prefix)]
        if not matching:
            return self.default
        return max(matching, key=lambda r: len(r.prefix)).project
