"""API keys: hashed at rest, checked in constant time, roles reach only their routes."""
import hashlib

import pytest

from gateway.http.auth import Authenticator, AuthError, authorize, mint_key


def make():
    records = {}
    key_id, key, record = mint_key("default", "app", 0)
    records[key_id] = record
    return Authenticator(records.get), key, record


def test_key_is_stored_only_as_a_hash():
    _, key, record = make()
    secret = key.split("_", 2)[2]
    assert record.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in record.secret_hash


def test_valid_key_authenticates_with_its_workspace_and_role():
    auth, key, _ = make()
    p = auth.authenticate(f"Bearer {key}")
    assert (p.workspace, p.role) == ("default", "app")


@pytest.mark.parametrize("header,code", [
    (None, "missing_api_key"),
    ("", "missing_api_key"),
    ("Basic abc", "invalid_api_key"),
    ("Bearer nonsense", "invalid_api_key"),
    ("Bearer gw_0123456789abcdef_" + "A" * 43, "invalid_api_key"),
])
def test_missing_or_unknown_keys_get_401(header, code):
    auth, _, _ = make()
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    assert (info.value.status, info.value.code) == (401, code)


def test_right_id_wrong_secret_is_refused():
    auth, key, _ = make()
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {tampered}")


def test_role_outside_the_route_gets_403():
    auth, key, _ = make()
    p = auth.authenticate(f"Bearer {key}")
    authorize(p, frozenset({"app", "admin"}))
    with pytest.raises(AuthError) as info:
        authorize(p, frozenset({"admin"}))
    assert (info.value.status, info.value.code) == (403, "forbidden_role")


def test_unknown_role_cannot_be_minted():
    with pytest.raises(ValueError):
        mint_key("default", "root", 0)
