"""The `[policy]` section of the gateway config: where the sensitive-word files live and how opt-outs
behave. Pure Structs; a bad section is refused with the exact path, like every other section."""
from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Struct

from gateway.policy.optout import DEFAULT_LANGUAGES, LanguageKeywords, OptOutKeywords


class OptOutConfig(Struct, frozen=True, forbid_unknown_fields=True):
    urgent_allowed: bool = True  # urgent (transactional) messages still reach opted-out contacts
    languages: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    keywords: dict[str, LanguageKeywords] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        OptOutKeywords.build(self.languages, self.keywords)  # ValueError -> a config problem at this path


class PolicyConfig(Struct, frozen=True, forbid_unknown_fields=True):
    # One TOML file per category. "" = the `sensitive-words` folder next to the config file, if there
    # is one; a relative path is taken from the config file's folder and must exist.
    sensitive_words_dir: Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$")] = ""  # (no NUL: not a path)
    opt_out: OptOutConfig = msgspec.field(default_factory=OptOutConfig)
