"""Roles per project, and the client address policy: pure logic."""

from __future__ import annotations

import pytest

from cloudpacs.auth.network import NetworkPolicy
from cloudpacs.auth.principal import OPEN_ACCESS, Principal, Role, parse_grants
from cloudpacs.errors import InvalidRequest


def test_roles_include_the_ones_below_and_stay_in_their_project() -> None:
    p = Principal("a", {"alpha": Role.CONTRIBUTOR, "beta": Role.READER})
    assert p.allows(Role.READER, "alpha") and p.allows(Role.CONTRIBUTOR, "alpha")
    assert not p.allows(Role.ADMIN, "alpha")
    assert not p.allows(Role.CONTRIBUTOR, "beta")
    assert not p.allows(Role.READER, "gamma")  # deny by default
    assert p.projects_with(Role.READER) == {"alpha", "beta"}
    assert p.projects_with(Role.CONTRIBUTOR) == {"alpha"}
    assert p.projects_with(Role.ADMIN) == frozenset()
    assert not p.allows_somewhere(Role.ADMIN) and not p.is_global_admin


def test_star_grants_every_project_and_combines_with_specific_grants() -> None:
    p = Principal("a", {"*": Role.READER, "alpha": Role.ADMIN})
    assert p.projects_with(Role.READER) is None  # all
    assert p.projects_with(Role.ADMIN) == {"alpha"}
    assert p.allows(Role.READER, "anything") and not p.allows(Role.CONTRIBUTOR, "beta")
    assert OPEN_ACCESS.is_global_admin and OPEN_ACCESS.projects_with(Role.ADMIN) is None


def test_grants_are_parsed_strictly() -> None:
    assert parse_grants({"alpha": "Reader", "*": "admin"}) == {
        "alpha": Role.READER,
        "*": Role.ADMIN,
    }
    with pytest.raises(InvalidRequest, match="unknown role"):
        parse_grants({"alpha": "owner"})
    with pytest.raises(InvalidRequest, match="not a project name"):
        parse_grants({"../x": "reader"})


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    policy = NetworkPolicy(["10.0.0.0/8"], ["192.168.1.10/32", "192.168.1.11"])
    # direct client: its own address, whatever it claims
    assert policy.client_address("203.0.113.5", "10.1.1.1") == "203.0.113.5"
    # through a trusted proxy: the right-most hop that is not a trusted proxy
    assert policy.client_address("192.168.1.10", "10.2.2.2") == "10.2.2.2"
    assert policy.client_address("192.168.1.10", "6.6.6.6, 10.2.2.2, 192.168.1.11") == "10.2.2.2"
    # a client spoofing an allowed address in front of its real one gets its real one
    assert policy.client_address("192.168.1.10", "10.9.9.9, 203.0.113.5") == "203.0.113.5"
    assert policy.allows("10.2.2.2") and not policy.allows("203.0.113.5")
    assert not policy.allows("not-an-address")
    assert NetworkPolicy([], []).allows("203.0.113.5")  # no allowlist: everyone
