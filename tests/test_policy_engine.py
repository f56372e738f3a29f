"""The policy engine as a pure core: which action a text gets from the lists of its workspace, the
hits with their spans in the text as sent, the exact masked text, and atomic replacement of rules."""
import pytest

from gateway.policy import scanner as scanner_module
from gateway.policy.engine import Engine, Rules, TermSpec, WordList, dedicated_workspaces, effective_lists
from gateway.policy.scanner import Scanner, Term

LISTS = {
    "fraud": WordList("block", ["send your pin"]),
    "investment": WordList("review", ["guaranteed returns"]),
    "abuse": WordList("mask", ["idiot", "ass"]),
    "spam": WordList("flag", ["free", "win"]),
}
RULES = Rules.build(LISTS)


def test_text_without_hits_has_no_verdict():
    assert RULES.verdict("Your order has shipped; we assess every parcel carefully") is None


@pytest.mark.parametrize("text,action", [
    ("please s e n d your p1n now", "block"),
    ("guaranteed returns!", "review"),
    ("you idiot", "mask"),
    ("a free gift", "flag"),
])
def test_each_action_is_the_verdict_of_its_list(text, action):
    assert RULES.verdict(text).action == action


def test_the_strongest_action_among_the_hits_wins():
    assert RULES.verdict("free gift, idiot: send your pin").action == "block"
    assert RULES.verdict("free gift, idiot, guaranteed returns").action == "review"
    assert RULES.verdict("free gift, idiot").action == "mask"


def test_hits_carry_term_category_action_and_span_in_the_text_as_sent():
    text = "🎁 Ｆｒｅｅ gift"
    verdict = RULES.verdict(text)
    [hit] = verdict.hits
    assert (hit.term, hit.category, hit.action) == ("free", "spam", "flag")
    assert text[hit.start:hit.end] == "Ｆｒｅｅ"
    assert verdict.view(text)["hits"][0]["matched"] == "Ｆｒｅｅ"


def test_mask_replaces_exactly_the_masked_spans_and_nothing_else():
    verdict = RULES.verdict("you 1d10t, it is free 🎉")
    assert verdict.text == "you *****, it is free 🎉"  # "free" is only flagged


def test_mask_covers_evasions_with_invisible_characters():
    verdict = RULES.verdict("i\u200bd\u200bi\u200bo\u200bt!")
    assert verdict.text == "*****!"


def test_flag_and_review_keep_the_text_unchanged():
    for text in ("a free gift", "guaranteed returns"):
        assert RULES.verdict(text).text == text


def test_flagged_lists_only_the_flag_hits():
    verdict = RULES.verdict("free idiot")
    assert [h.term for h in verdict.flagged()] == ["free"]
    assert verdict.text == "free *****"


def test_list_options_apply_to_terms_without_their_own():
    rules = Rules.build({"x": WordList("flag", ["free", TermSpec("win", whole_word=True)], whole_word=False)})
    assert [h.term for h in rules.verdict("carefree").hits] == ["free"]
    assert rules.verdict("twine") is None


def test_lists_without_terms_build_no_rules():
    assert Rules.build({}) is None
    assert Rules.build({"off": WordList("block", [])}) is None


def test_a_term_that_cannot_match_is_refused():
    with pytest.raises(ValueError, match="no letter or digit"):
        Rules.build({"x": WordList("block", ["!!!"])})


def test_engine_without_rules_has_no_verdict_and_is_inactive():
    engine = Engine()
    assert engine.verdict("default", "free") is None and not engine.active("default")


def test_engine_default_rules_apply_to_workspaces_without_their_own():
    engine = Engine()
    engine.swap(RULES, {"quiet": None})
    assert engine.verdict("anyone", "free").action == "flag"
    assert engine.verdict("quiet", "free") is None and not engine.active("quiet")


def test_engine_set_workspace_replaces_only_that_workspace():
    engine = Engine()
    engine.swap(RULES, {})
    strict = Rules.build({"spam": WordList("block", ["free"])})
    engine.set_workspace("strict", strict)
    assert engine.verdict("strict", "free").action == "block"
    assert engine.verdict("other", "free").action == "flag"
    engine.drop_workspace("strict")
    assert engine.verdict("strict", "free").action == "flag"


def test_a_verdict_in_progress_keeps_the_rules_it_started_with():
    engine = Engine()
    engine.swap(RULES, {})
    rules = engine.rules("default")
    engine.swap(None, {})
    assert rules.verdict("free").action == "flag"  # built rules are never changed, only replaced
    assert engine.verdict("default", "free") is None


def test_engine_changes_return_each_rule_set_they_let_go_of_once():
    engine = Engine()
    a, b, c = (Rules.build({"spam": WordList("flag", [w])}) for w in ("free", "win", "cash"))
    assert engine.swap(a, {"x": b, "y": b, "quiet": None}) == []
    assert engine.set_workspace("x", c) == []  # b is still y's
    assert engine.set_workspace("y", c) == [b]
    assert engine.set_workspace("new", c) == []
    assert engine.drop_workspace("x") == []  # c is still y's and new's
    assert engine.drop_workspace("y") == []
    assert engine.swap(a, {"z": b}) == [c]  # a is kept; c leaves with "new"
    assert engine.drop_workspace("z") == [b]
    assert engine.swap(None, {}) == [a]


def test_api_lists_replace_file_lists_of_the_same_category():
    files = {"spam": (WordList("flag", ["free"]), None), "vip": (WordList("block", ["x1"]), ("gold",))}
    api = {"spam": WordList("block", ["win"])}
    assert effective_lists(files, api, "default") == {"spam": api["spam"]}
    assert set(effective_lists(files, {}, "gold")) == {"spam", "vip"}
    assert effective_lists(files, {}, None) == {"spam": files["spam"][0]}
    assert dedicated_workspaces(files, ["default"]) == {"gold", "default"}


def test_sharded_scanner_finds_what_one_automaton_finds(monkeypatch):
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676)}x" for i in range(300)]
    single = Scanner.build({"c": [Term(w) for w in words]})
    monkeypatch.setattr(scanner_module, "SHARD_KEYS", 16)
    pauses = []
    sharded = Scanner.build({"c": [Term(w) for w in words]}, pause=lambda: pauses.append(1))
    assert single.shards == 1 and sharded.shards > 10
    assert pauses  # a builder in a worker thread gets to release the GIL
    text = f"{words[0]} and {words[150]}, then {words[299]}!"
    assert sharded.scan(text) == single.scan(text) and len(single.scan(text)) == 3


def test_a_repeated_term_is_reported_once_and_counted_and_every_occurrence_is_masked():
    from gateway.policy.engine import MAX_REPORTED_HITS

    rules = Rules.build({"abuse": WordList("mask", ["idiot"]), "spam": WordList("flag", ["free"])})
    text = "free idiot " * 800
    verdict = rules.verdict(text)
    assert verdict.hit_count == 1600
    assert [(h.term, h.start) for h in verdict.hits] == [("free", 0), ("idiot", 5)]
    assert "idiot" not in verdict.text and verdict.text.count("*****") == 800
    assert verdict.view(text)["hit_count"] == 1600

    many = Rules.build({"spam": WordList("flag", [f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(40)])})
    text = " ".join(f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(40))
    verdict = many.verdict(text)
    assert verdict.hit_count == 40 and len(verdict.hits) == MAX_REPORTED_HITS
