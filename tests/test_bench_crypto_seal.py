"""bench.crypto_seal measures both AES-GCM implementations where the native one is in use, and says
which one the gateway uses."""
from bench import crypto_seal
from gateway.crypto import aes_gcm


def test_reports_rates_for_each_implementation_and_the_one_in_use():
    r = crypto_seal.run(scale=0.02)
    assert r["in_use"] == aes_gcm.IMPLEMENTATION
    for name in crypto_seal.RECORDS:
        row = r[name]
        impls = ["pure"] + (["native"] if aes_gcm.IMPLEMENTATION == "native" else [])
        for impl in impls:
            assert row[impl]["seal_per_s"] > 0 and row[impl]["open_per_s"] > 0
        assert ("seal_ratio" in row) == ("native" in row)
