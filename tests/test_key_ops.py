"""API keys in the store: minting and revocation write their audit entries in the same transaction,
a revoked key stays listed, and the API cannot revoke the last admin key in force."""
from gateway.http.auth import mint_key
from gateway.ids import IdGenerator
from gateway.store import key_ops as K
from gateway.store import policy_ops as P
from tests.test_ops import run, store  # noqa: F401  (store: the fixture of a fresh LMDB store)


def put(store, workspace, role, label=""):
    key_id, _, record = mint_key(workspace, role, 1_000, label)
    run(store, K.put_api_key, (key_id, record, K.audit_entry(IdGenerator(), 1_000, "tester", "admin",
                                                               "api_key.create", key_id, record)))
    return key_id


def revoke(store, key_id, keep_an_admin=True, at_ms=2_000):
    ids = IdGenerator()
    return run(store, K.revoke_api_key, K.RevokeArg(
        key_id, at_ms, lambda rec: K.audit_entry(ids, at_ms, "tester", "admin", "api_key.revoke", key_id, rec),
        keep_an_admin))


def audit(store):
    return [P.audit_decoder.decode(raw) for _, raw in store.scan("audit")]


def keys(store, workspace=None):
    with store.env.begin() as txn:
        return K.all_keys(txn, store.dbs["api_keys"], workspace)


def test_a_revoked_key_stays_listed_with_when_and_both_changes_are_audited_under_its_workspace(store):
    admin = put(store, "default", "admin")
    app = put(store, "shop", "app", "orders")
    outcome, record = revoke(store, app)
    assert outcome == K.REVOKED and record.revoked_ms == 2_000
    views = {v["id"]: v for v in (K.view(k, r) for k, r in keys(store))}
    assert views[app]["revoked_at"] == "1970-01-01T00:00:02.000Z" and views[admin]["revoked_at"] is None
    assert "secret_hash" not in views[app] and all(isinstance(v, (str, type(None))) for v in views[app].values())
    entries = [(a.action, a.workspace, a.target, a.detail) for a in audit(store)]
    assert ("api_key.create", "shop", app, {"role": "app", "label": "orders"}) in entries
    assert ("api_key.revoke", "shop", app, {"role": "app", "label": "orders"}) in entries


def test_revoking_twice_keeps_the_first_time_and_writes_nothing(store):
    put(store, "default", "admin")
    app = put(store, "default", "app")
    revoke(store, app, at_ms=2_000)
    before = len(audit(store))
    outcome, record = revoke(store, app, at_ms=9_000)
    assert outcome == K.ALREADY_REVOKED and record.revoked_ms == 2_000
    assert len(audit(store)) == before


def test_an_unknown_key_is_reported_and_nothing_is_written(store):
    assert revoke(store, "0123456789abcdef") == (K.UNKNOWN, None)
    assert audit(store) == []


def test_the_last_admin_key_in_force_is_kept_unless_the_caller_says_otherwise(store):
    first = put(store, "default", "admin")
    second = put(store, "other", "admin")
    assert revoke(store, first)[0] == K.REVOKED  # another admin key is still in force
    outcome, record = revoke(store, second)
    assert outcome == K.LAST_ADMIN and record.revoked_ms == 0
    assert [r.revoked_ms for k, r in keys(store) if k == second] == [0]
    assert revoke(store, second, keep_an_admin=False)[0] == K.REVOKED  # the host's CLI may


def test_listing_one_workspace(store):
    put(store, "default", "admin")
    shop = put(store, "shop", "app")
    assert [k for k, _ in keys(store, "shop")] == [shop]
    assert keys(store, "nobody") == []
