"""A PUT body of a word list decoded in pieces gives exactly what one msgspec decode gives: the same
list, or the same error, whatever the terms contain."""
import random

import msgspec
import orjson
import pytest

from gateway.policy.engine import MAX_TERMS, PIECE_BYTES, WordList, decode_word_list

WHOLE = msgspec.json.Decoder(WordList)


def body_of(terms, action="block", **extra) -> bytes:
    return orjson.dumps({"action": action, "terms": terms, **extra})


def test_a_big_body_decodes_to_the_same_list_and_calls_pause_between_pieces():
    rng = random.Random(3)
    terms = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 12))) for _ in range(20_000)]
    terms[7] = {"text": "free money", "whole_word": False}
    body = body_of(terms, whole_word=True)
    pauses = []
    words = decode_word_list(body, lambda: pauses.append(1))
    assert len(body) > 4 * PIECE_BYTES
    assert words == WHOLE.decode(body)
    assert len(pauses) >= len(body) // PIECE_BYTES


def test_terms_that_look_like_separators_inside_strings_and_objects_decode_unchanged():
    tricky = ['a", "b', 'x"},{"text": "y', 'c\\", d', "\\", '"', "},", '", {"text": "z"}, "', "e\u2028f"]
    terms = [tricky[i % len(tricky)] + str(i) for i in range(6_000)]
    terms += [{"text": t, "whole_word": True} for t in tricky]
    body = body_of(terms)
    assert len(body) > 2 * PIECE_BYTES
    assert decode_word_list(body) == WHOLE.decode(body)


def test_whitespace_between_terms_is_accepted_as_json_allows():
    terms = [f"term{i}" for i in range(8_000)]
    body = b'{"terms" : [\n' + b' ,\r\n\t'.join(orjson.dumps(t) for t in terms) + b'\n] , "action": "flag"}'
    assert decode_word_list(body) == WHOLE.decode(body) == WordList("flag", terms)


@pytest.mark.parametrize("bad, index", [(17, 100), ("", 8_000), ({"text": "a", "whole": 1}, 6_500), ("x" * 201, 8_999)])
def test_a_bad_term_deep_in_a_big_body_gives_the_error_of_one_decode(bad, index):
    terms = [f"term{i}" for i in range(9_000)]
    terms[index] = bad
    body = body_of(terms)
    with pytest.raises(msgspec.ValidationError) as whole:
        WHOLE.decode(body)
    with pytest.raises(msgspec.ValidationError) as pieces:
        decode_word_list(body)
    assert str(pieces.value) == str(whole.value)
    assert f"$.terms[{index}]" in str(pieces.value)


def test_broken_json_in_a_big_body_gives_the_error_of_one_decode():
    body = body_of([f"term{i}" for i in range(9_000)])
    for broken in (body[:-2], body.replace(b'"term5000"', b'"term5000'), body.replace(b'"term77",', b'"term77",,')):
        with pytest.raises(msgspec.DecodeError) as whole:
            WHOLE.decode(broken)
        with pytest.raises(msgspec.DecodeError) as pieces:
            decode_word_list(broken)
        assert str(pieces.value) == str(whole.value)


def test_more_than_max_terms_gives_the_length_error_of_one_decode():
    body = body_of(["t"] * (MAX_TERMS + 1))
    with pytest.raises(msgspec.ValidationError) as whole:
        WHOLE.decode(body)
    with pytest.raises(msgspec.ValidationError) as pieces:
        decode_word_list(body)
    assert str(pieces.value) == str(whole.value)
    assert "$.terms" in str(pieces.value)


class _NoWholeBodyDecode:
    def decode(self, body):
        raise AssertionError("the usual shape must not be decoded in one call")


@pytest.mark.parametrize("head, tail", [
    (b'{"action":"block","terms":', b"}"),
    (b'{"action": "mask", "terms": ', b', "whole_word": true}'),
    (b' \n{\r\n\t"action" :\t"flag" ,\n "terms"\n:\n', b'\n,\n"whole_word" : false \n}\n '),
    (b'{"action":"review","terms":', b',"whole_word":null}'),
])
def test_the_usual_shape_is_read_around_its_terms_without_one_decode_of_the_whole_body(monkeypatch, head, tail):
    from gateway.policy import engine
    monkeypatch.setattr(engine, "_SHAPE", _NoWholeBodyDecode())
    terms = [f"term{i}" for i in range(8_000)] + [{"text": "free money", "whole_word": False}]
    body = head + orjson.dumps(terms) + tail
    assert decode_word_list(body) == WHOLE.decode(body)


@pytest.mark.parametrize("make", [
    lambda a, b: b'{"action":"block","terms":' + a + b',"action":"flag","terms":' + b + b"}",
    lambda a, b: b'{"action":"block","terms":' + a + b',"extra":' + b + b"}",
    lambda a, b: b'{"action":"block","terms":' + a + b',"whole_word":true,"terms":' + b + b"}",
    lambda a, b: b'{"action":"block","terms":' + a + b"," + b + b"}",
    lambda a, b: b'{"action":"block","terms":' + a[:-1] + b"]]" + b"}",
    lambda a, b: b'{"action":"block","terms":' + a + b',"whole_word":true}\v',
])
def test_bodies_that_only_look_like_the_usual_shape_give_what_one_decode_gives(make):
    a = orjson.dumps([f"a{i}" for i in range(6_000)])
    b = orjson.dumps([f"b{i}" for i in range(6_000)])
    body = make(a, b)
    assert len(body) > PIECE_BYTES
    try:
        expected = WHOLE.decode(body)
    except msgspec.DecodeError as exc:
        with pytest.raises(type(exc)) as got:
            decode_word_list(body)
        assert str(got.value) == str(exc)
    else:
        assert decode_word_list(body) == expected
