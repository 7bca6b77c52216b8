"""A caller and its grants: a role per research project. Deny by default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from cloudpacs.errors import InvalidRequest
from cloudpacs.projects import ALL_PROJECTS, is_project_name


class Role(IntEnum):
    """Each role includes the ones below it."""

    READER = 1  # QIDO-RS, WADO-RS
    CONTRIBUTOR = 2  # also STOW-RS
    ADMIN = 3  # also deletion; with "*": tokens and configuration

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise InvalidRequest(f"unknown role {name!r} (reader, contributor or admin)") from None


def parse_grants(raw: Mapping[str, str]) -> dict[str, Role]:
    """{"project": "role"} with "*" for every project; refuses unknown names and roles."""
    grants: dict[str, Role] = {}
    for project, role in raw.items():
        if project != ALL_PROJECTS and not is_project_name(project):
            raise InvalidRequest(f"{project!r} is not a project name")
        grants[project] = Role.named(role)
    return grants


@dataclass(frozen=True)
class Principal:
    subject: str
    grants: Mapping[str, Role] = field(default_factory=dict)
    default_project: str | None = None
    credential: str = "none"  # token id, "jwt" or "open": for the audit trail

    def role_in(self, project: str) -> Role | None:
        roles = [r for p, r in self.grants.items() if p in (project, ALL_PROJECTS)]
        return max(roles) if roles else None

    def allows(self, role: Role, project: str) -> bool:
        held = self.role_in(project)
        return held is not None and held >= role

    def projects_with(self, role: Role) -> frozenset[str] | None:
        """The projects where the caller holds `role`; None means every project."""
        if self.grants.get(ALL_PROJECTS, 0) >= role:
            return None
        return frozenset(p for p, r in self.grants.items() if r >= role and p != ALL_PROJECTS)

    def allows_somewhere(self, role: Role) -> bool:
        projects = self.projects_with(role)
        return projects is None or bool(projects)

    @property
    def is_global_admin(self) -> bool:
        return self.grants.get(ALL_PROJECTS) == Role.ADMIN


# The caller when authentication is off (loopback default, or --insecure).
OPEN_ACCESS = Principal("anonymous", {ALL_PROJECTS: Role.ADMIN}, credential="open")
