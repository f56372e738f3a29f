"""API keys: hashed at rest, checked in constant time, roles reach only their routes."""
import hashlib

import msgspec
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


def counting(records=None):
    """An Authenticator whose store lookups are counted (a lookup happens once per key id)."""
    records, loads = {} if records is None else records, []
    key_id, key, record = mint_key("default", "app", 0)
    records[key_id] = record

    def load(kid):
        loads.append(kid)
        return records.get(kid)

    return Authenticator(load), key, loads


def test_a_connection_memo_returns_the_same_principal_for_the_same_key():
    auth, key, _ = counting()
    memo: dict = {}
    first = auth.authenticate(f"Bearer {key}", memo)
    assert auth.authenticate(f"Bearer {key}", memo) is first
    assert (first.workspace, first.role) == ("default", "app")


def test_a_memo_never_lets_a_different_key_through():
    auth, key, _ = counting()
    memo: dict = {}
    auth.authenticate(f"Bearer {key}", memo)
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {tampered}", memo)
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    with pytest.raises(AuthError):
        auth.authenticate(None, memo)


def test_a_memo_holds_no_hash_and_no_failed_attempt():
    auth, key, _ = counting()
    memo: dict = {}
    with pytest.raises(AuthError):
        auth.authenticate("Bearer gw_0123456789abcdef_" + "A" * 43, memo)
    assert memo == {}


def test_a_memo_is_not_trusted_once_its_key_is_forgotten():
    auth, key, loads = counting()
    memo: dict = {}
    auth.authenticate(f"Bearer {key}", memo)
    auth.forget(key.split("_")[1])  # e.g. its record left the store
    auth.authenticate(f"Bearer {key}", memo)
    assert len(loads) == 2  # verified again against the store, not taken from the memo


def test_non_ascii_header_is_refused_with_a_memo_too():
    auth, _, _ = counting()
    with pytest.raises(AuthError) as info:
        auth.authenticate("Bearer gw_é", {})
    assert info.value.code == "invalid_api_key"


def refused(auth, header, memo=None) -> str:
    """The code of the AuthError that `header` gets."""
    with pytest.raises(AuthError) as info:
        auth.authenticate(header, memo)
    return info.value.code


def revoked(record, at_ms=5):
    return msgspec.structs.replace(record, revoked_ms=at_ms)


def test_a_revoked_key_is_refused_at_once_even_on_a_connection_that_verified_it():
    records: dict = {}
    auth, key, loads = counting(records)
    key_id = key.split("_")[1]
    memo: dict = {}
    auth.authenticate(f"Bearer {key}", memo)
    auth.remember(key_id, revoked(records[key_id]))  # the admin API stored the revocation
    for m in (memo, None):
        with pytest.raises(AuthError) as info:
            auth.authenticate(f"Bearer {key}", m)
        assert (info.value.status, info.value.code) == (401, "revoked_api_key")
    assert len(loads) == 1  # known as revoked: no store read per attempt


def test_only_the_holder_of_the_secret_learns_that_a_key_was_revoked():
    records: dict = {}
    auth, key, _ = counting(records)
    key_id = key.split("_")[1]
    auth.remember(key_id, revoked(records[key_id]))
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert refused(auth, f"Bearer {wrong}") == "invalid_api_key"


def test_refresh_takes_revocations_stored_by_another_process_and_keeps_unchanged_principals():
    records: dict = {}
    auth, key, _ = counting(records)
    other_id, other_key, other = mint_key("default", "admin", 0)
    records[other_id] = other
    key_id = key.split("_")[1]
    memo: dict = {}
    first = auth.authenticate(f"Bearer {key}", memo)
    auth.authenticate(f"Bearer {other_key}")
    assert sorted(auth.known()) == sorted([key_id, other_id])
    records[key_id] = revoked(records[key_id])  # the CLI revoked it
    assert auth.refresh({kid: records.get(kid) for kid in auth.known()}) == 1
    assert refused(auth, f"Bearer {key}", memo) == "revoked_api_key"
    assert auth.refresh({kid: records.get(kid) for kid in auth.known()}) == 0
    admin = auth.authenticate(f"Bearer {other_key}")
    assert auth.authenticate(f"Bearer {other_key}") is admin and admin is not first
    del records[other_id]  # gone from the store altogether
    assert auth.refresh({kid: records.get(kid) for kid in auth.known()}) == 1
    assert refused(auth, f"Bearer {other_key}") == "invalid_api_key"


def test_a_changed_record_makes_the_memos_of_its_key_stale():
    records: dict = {}
    auth, key, _ = counting(records)
    key_id = key.split("_")[1]
    memo: dict = {}
    first = auth.authenticate(f"Bearer {key}", memo)
    records[key_id] = msgspec.structs.replace(records[key_id], secret_hash=b"\0" * 32)  # another secret
    assert auth.refresh({key_id: records[key_id]}) == 1
    assert refused(auth, f"Bearer {key}", memo) == "invalid_api_key"  # the memo vouches no more
    records[key_id] = msgspec.structs.replace(records[key_id], role="agent")
    auth.refresh({key_id: records[key_id]})
    assert auth._cache[key_id] is not first and auth._cache[key_id].role == "agent"
