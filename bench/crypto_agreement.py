"""Micro-benchmark of session agreement: new X3DH and PQXDH sessions per second on one core, for the
initiator (signature checks, fresh EK_A, the DHs, ML-KEM encapsulation, HKDF, the header) and the
responder. It measures in-process CPU cost only, must never touch the network or a store, and reports
the target rather than failing on it."""
from __future__ import annotations

import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM1024PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bench.common import best_rate, micro_main
from gateway.crypto import agreement, identity
from gateway.crypto.agreement import InitialHeader, SignatureCache, initiate, respond
from gateway.crypto.identity import (
    IdentityKeyPair,
    OneTimePrekey,
    PqPrekey,
    PrekeyBundle,
    SignedPrekey,
    make_bundle,
    make_one_time_prekey,
    make_pq_prekey,
    make_signed_prekey,
)

PQXDH_INITIATE_TARGET = 2_000  # sessions/s, one core
REPEATS = 3


def _rate(fn, n: int) -> float:
    """Best of REPEATS runs of fn(i) for i in range(n), in calls per second."""

    def once() -> None:
        for i in range(n):
            fn(i)

    return best_rate(n, once, REPEATS)


def _responders(count: int) -> list[tuple[IdentityKeyPair, SignedPrekey, OneTimePrekey, PqPrekey]]:
    out = []
    for _ in range(count):
        identity = IdentityKeyPair.generate()
        out.append((identity, make_signed_prekey(identity, 1), make_one_time_prekey(1), make_pq_prekey(identity, 1)))
    return out


def _primitive_floor(bundle: PrekeyBundle) -> float:
    """Seconds per PQXDH initiation spent in `cryptography` alone: two Ed25519 verifications, a fresh
    X25519 key, four X25519 operations, loading the ML-KEM key and encapsulating."""
    ed = Ed25519PublicKey.from_public_bytes(bundle.identity_key)
    spk = X25519PublicKey.from_public_bytes(bundle.signed_prekey[1:])
    kem = bundle.pq_prekey[1:]
    me = X25519PrivateKey.generate()

    def once(_: int) -> None:
        ed.verify(bundle.signed_prekey_signature, bundle.signed_prekey)
        ed.verify(bundle.pq_prekey_signature, bundle.pq_prekey)
        ek = X25519PrivateKey.generate()
        me.exchange(spk), ek.exchange(spk), ek.exchange(spk), ek.exchange(spk)
        MLKEM1024PublicKey.from_public_bytes(kem).encapsulate()

    return 1 / _rate(once, 500)


def run(scale: float = 1.0) -> dict:
    n = max(50, int(2_000 * scale))
    alice = IdentityKeyPair.generate()
    peers = _responders(32)
    k = len(peers)
    pq_bundles = [make_bundle(i, s, o, q) for i, s, o, q in peers]
    ec_bundles = [make_bundle(i, s, o) for i, s, o, _ in peers]

    # Cold: every session toward a peer never seen before (the memos of identity conversions and of
    # parsed KEM keys are emptied each time; no signature cache): the gateway opening sessions
    # toward new customers.
    def forget() -> None:
        identity._ed25519_public_to_x25519.cache_clear()
        agreement._kem_public_key.cache_clear()

    def init_pq(i: int) -> None:
        forget()
        initiate(alice, pq_bundles[i % k])

    def init_ec(i: int) -> None:
        forget()
        initiate(alice, ec_bundles[i % k])

    def init_pq_wire(i: int) -> None:
        forget()
        initiate(alice, PrekeyBundle.decode(pq_bundles[i % k].encode())).header.encode()

    # Warm: many sessions toward the same published bundles - simulated customers opening sessions
    # toward a gateway sender; signature checks, the identity conversion and the parsed KEM key are
    # then remembered.
    cache = SignatureCache()

    def init_pq_warm(i: int) -> None:
        initiate(alice, pq_bundles[i % k], signatures=cache)

    # Responder: the same headers answered repeatedly through non-consuming dict lookups (a consuming
    # store would run out of one-time prekeys; a dict lookup costs the same).
    lookups = [
        {"signed_prekeys": {1: s}, "one_time_prekeys": {1: o}, "pq_prekeys": {1: q}} for _, s, o, q in peers
    ]
    pq_headers = [initiate(alice, b).header.encode() for b in pq_bundles]
    ec_headers = [initiate(alice, b).header.encode() for b in ec_bundles]

    def resp_pq(i: int) -> None:
        forget()
        respond(peers[i % k][0], InitialHeader.decode(pq_headers[i % k]), **lookups[i % k])

    def resp_ec(i: int) -> None:
        forget()
        respond(peers[i % k][0], InitialHeader.decode(ec_headers[i % k]), **lookups[i % k])

    rates = {
        "pqxdh_initiate_per_s": _rate(init_pq, n),
        "pqxdh_initiate_warm_per_s": _rate(init_pq_warm, n),
        "pqxdh_initiate_wire_per_s": _rate(init_pq_wire, n),
        "x3dh_initiate_per_s": _rate(init_ec, n),
        "pqxdh_respond_per_s": _rate(resp_pq, n),
        "x3dh_respond_per_s": _rate(resp_ec, n),
    }
    result: dict = {key: round(v) for key, v in rates.items()}
    result["primitive_floor_us"] = round(_primitive_floor(pq_bundles[0]) * 1e6)
    result["sessions_per_measurement"] = n
    result["one_time_prekey"] = True
    result["target_pqxdh_initiate_per_s"] = PQXDH_INITIATE_TARGET
    result["meets_target"] = rates["pqxdh_initiate_per_s"] >= PQXDH_INITIATE_TARGET
    result["meets_target_warm"] = rates["pqxdh_initiate_warm_per_s"] >= PQXDH_INITIATE_TARGET
    result["bundle_bytes"] = {"pqxdh": len(pq_bundles[0].encode()), "x3dh": len(ec_bundles[0].encode())}
    result["header_bytes"] = {"pqxdh": len(pq_headers[0]), "x3dh": len(ec_headers[0])}
    return result


def print_table(r: dict) -> None:
    for key in (
        "pqxdh_initiate_per_s",
        "pqxdh_initiate_warm_per_s",
        "pqxdh_initiate_wire_per_s",
        "x3dh_initiate_per_s",
        "pqxdh_respond_per_s",
        "x3dh_respond_per_s",
    ):
        print(f"{key:48s} {r[key]:>8,}/s  ({1e6 / r[key]:6.0f} us)")
    print(f"cryptography primitives alone per PQXDH initiation: {r['primitive_floor_us']} us "
          f"({1e6 / r['primitive_floor_us']:,.0f}/s)")
    print(f"bundle bytes {r['bundle_bytes']}  header bytes {r['header_bytes']}")
    print(
        f"target: PQXDH initiate >= {r['target_pqxdh_initiate_per_s']:,}/s on one core: {r['meets_target']} "
        f"(warm, same bundle: {r['meets_target_warm']})"
    )


def main(argv: list[str] | None = None) -> int:
    return micro_main(run, print_table, argv)


if __name__ == "__main__":
    sys.exit(main())
