"""Safety numbers: libsignal's displayable fingerprint (iterated SHA-512 over version, Encode(IK) and a
stable identifier; 30 digits per side, lower half first)."""
import pytest

from gateway.crypto.fingerprint import (
    digest_digits,
    format_safety_number,
    identity_digest,
    safety_number,
)
from gateway.crypto.identity import IdentityKeyPair, derive_identity

# libsignal rust/protocol/src/fingerprint.rs, fingerprint_test_v1 (5200 iterations).
ALICE_KEY = bytes.fromhex("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
BOB_KEY = bytes.fromhex("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
ALICE_ID = "+14152222222"
BOB_ID = "+14153333333"
LIBSIGNAL_DISPLAYABLE = "300354477692869396892869876765458257569162576843440918079131"
# The 32-byte per-side fingerprints inside libsignal's scannable (protobuf) encoding of the same vector.
ALICE_SCANNABLE = "1e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df"
BOB_SCANNABLE = "d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d"


def test_reproduces_libsignal_displayable_fingerprint_vector():
    assert safety_number(ALICE_ID, ALICE_KEY, BOB_ID, BOB_KEY) == LIBSIGNAL_DISPLAYABLE


def test_per_side_digests_match_libsignal_scannable_fingerprints():
    assert identity_digest(ALICE_ID, ALICE_KEY)[:32].hex() == ALICE_SCANNABLE
    assert identity_digest(BOB_ID, BOB_KEY)[:32].hex() == BOB_SCANNABLE


def test_both_sides_see_the_same_sixty_digits():
    a, b = IdentityKeyPair.generate().public, IdentityKeyPair.generate().public
    seen_by_a = safety_number("+15550100001", a, "+15550199999", b)
    seen_by_b = safety_number("+15550199999", b, "+15550100001", a)
    assert seen_by_a == seen_by_b
    assert len(seen_by_a) == 60 and seen_by_a.isdigit()


def test_lower_half_comes_first():
    number = safety_number(ALICE_ID, ALICE_KEY, BOB_ID, BOB_KEY)
    assert number[:30] <= number[30:]


def test_number_changes_when_a_key_changes():
    a, b, mallory = (IdentityKeyPair.generate().public for _ in range(3))
    assert safety_number("+1", a, "+2", b) != safety_number("+1", a, "+2", mallory)


def test_number_changes_when_an_identifier_changes():
    a, b = IdentityKeyPair.generate().public, IdentityKeyPair.generate().public
    assert safety_number("+1", a, "+2", b) != safety_number("+1", a, "+3", b)


def test_identity_key_and_its_encoding_give_the_same_number():
    a = derive_identity(b"seed", "+15550100001").public
    b = derive_identity(b"seed", "+15550199999").public
    assert safety_number("+1", a, "+2", b) == safety_number("+1", a.encoded, "+2", b.encoded)


def test_each_five_byte_chunk_becomes_five_digits_mod_100000():
    digest = (99_999).to_bytes(5, "big") + (100_000).to_bytes(5, "big") + (123_456_789).to_bytes(5, "big") * 4
    assert digest_digits(digest) == "99999" + "00000" + "56789" * 4


def test_raw_ed25519_keys_are_not_accepted():
    with pytest.raises(ValueError, match="Encode"):
        safety_number("+1", b"\x01" * 32, "+2", BOB_KEY)


def test_formats_as_twelve_groups_of_five():
    assert format_safety_number(LIBSIGNAL_DISPLAYABLE).split() == [
        LIBSIGNAL_DISPLAYABLE[i:i + 5] for i in range(0, 60, 5)
    ]
