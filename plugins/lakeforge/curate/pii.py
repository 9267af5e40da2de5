"""PII scrubbing: e-mail addresses, IP addresses, card numbers and phone numbers become typed
placeholders (``<EMAIL_ADDRESS>``, ``<IP_ADDRESS>``, ``<CREDIT_CARD>``, ``<PHONE_NUMBER>``,
Presidio's entity names), counted per kind in the report.

E-mail and IP addresses are pure patterns and are replaced for a whole batch at once by Arrow's
RE2 kernels. Card and phone numbers need a check a regex cannot express (the Luhn checksum; digit
counts that tell a phone number from a year range such as ``1939-1945``), so they go through
Python's ``re`` — only for the texts a cheap RE2 pre-filter finds a long digit run in.
"""

from __future__ import annotations

import re
from typing import ClassVar, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakeforge.stage.steps import BatchStep
from lakeforge.errors import ConfigError

EMAIL = (r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"\b{_OCTET}(?:\.{_OCTET}){{3}}\b"
_HEX = r"[0-9A-Fa-f]{1,4}"
# full form, or compressed with "::" between at least two groups (fe80::1, 2001:db8::8a2e:370:7334)
IPV6 = rf"\b(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,6}}:(?:{_HEX}:){{0,5}}{_HEX})\b"
#: RE2 pre-filter: a run of 7+ characters of digits and phone/card separators.
DIGIT_RUN = r"\d[\d ().+-]{5,}\d"

CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
PHONE = re.compile(
    r"(?<![\w+.-])"
    r"(?:\+\d{1,3}[ .-]?)?"  # country code
    r"(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])?"  # area code
    r"\d{2,4}[ .-]\d{3,4}(?:[ .-]\d{2,4})?"
    r"(?![\w-]|\.\d)"
)
LOCAL_PHONE = re.compile(r"\d{3}[ .-]\d{4}")

PLACEHOLDERS = {"email": "<EMAIL_ADDRESS>", "ip": "<IP_ADDRESS>", "card": "<CREDIT_CARD>", "phone": "<PHONE_NUMBER>"}


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def is_phone(match: str) -> bool:
    """A phone-shaped match is a phone number when it has 7-15 digits and either a country code,
    an area code in parentheses, 10+ digits, or is exactly a local ``555-1234``; this keeps
    year ranges (``1939-1945``) and figures (``12 345 678``) out."""
    digits = sum(ch.isdigit() for ch in match)
    if not 7 <= digits <= 15:
        return False
    return match.startswith("+") or "(" in match or digits >= 10 or LOCAL_PHONE.fullmatch(match) is not None


def scrub_numbers(text: str, kinds: Sequence[str]) -> tuple[str, int, int]:
    """Replace card and phone numbers in one text: ``(text, cards, phones)``."""
    counts = {"card": 0, "phone": 0}

    def replace(kind, check):
        def sub(m):
            if check(m.group(0)):
                counts[kind] += 1
                return PLACEHOLDERS[kind]
            return m.group(0)
        return sub

    if "card" in kinds:
        text = CARD.sub(replace("card", is_card), text)
    if "phone" in kinds:
        text = PHONE.sub(replace("phone", is_phone), text)
    return text, counts["card"], counts["phone"]


class PiiScrubber(BatchStep):
    """Replace PII with typed placeholders; counts go to the report as ``pii_<kind>``.

    ``Write me at jo@example.com or +1 555-010-2233`` becomes
    ``Write me at <EMAIL_ADDRESS> or <PHONE_NUMBER>``. Nothing is dropped.
    """

    name = "scrub_pii"
    KINDS: ClassVar[tuple[str, ...]] = ("email", "ip", "card", "phone")
    metrics = tuple(f"pii_{k}" for k in KINDS)

    def __init__(self, kinds: Sequence[str] = KINDS):
        """Args:
            kinds: which PII to replace, among ``email``, ``ip``, ``card``, ``phone``.
        """
        unknown = sorted(set(kinds) - set(self.KINDS))
        if unknown:
            raise ConfigError(f"scrub_pii: unknown kinds {unknown}; known: {list(self.KINDS)}")
        self.kinds = [k for k in self.KINDS if k in kinds]

    def process(self, batch):
        text = batch.text
        rows = len(batch)
        # e-mail first: its domain could otherwise read as an IP or a number
        for kind, pattern in (("email", EMAIL), ("ip", IPV4), ("ip", IPV6)):
            if kind not in self.kinds:
                continue
            found = pc.fill_null(pc.count_substring_regex(text, pattern), 0).to_numpy(zero_copy_only=False)
            if found.any():
                text = pc.replace_substring_regex(text, pattern, PLACEHOLDERS[kind])
            batch.count(f"pii_{kind}", found)
        cards, phones = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        if "card" in self.kinds or "phone" in self.kinds:
            candidates = pc.fill_null(pc.match_substring_regex(text, DIGIT_RUN), False)
            rows_with_digits = np.flatnonzero(candidates.to_numpy(zero_copy_only=False))
            if len(rows_with_digits):
                new = []
                for row, value in zip(rows_with_digits, text.filter(candidates).to_pylist()):
                    value, cards[row], phones[row] = scrub_numbers(value, self.kinds)
                    new.append(value)
                text = pc.replace_with_mask(text, candidates, pa.array(new, text.type))
        if "card" in self.kinds:
            batch.count("pii_card", cards)
        if "phone" in self.kinds:
            batch.count("pii_phone", phones)
        batch.text = text
