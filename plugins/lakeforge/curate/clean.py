"""Cleaners: HTML to text, Unicode normalization, control characters and whitespace, lowercasing.

All are batch steps (fused into the chain's ``mapInArrow`` pass). The regex work runs in Arrow's
C++ kernels (RE2) over whole batches; only HTML goes through a per-document parser, and only for
documents that contain markup.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc

from lakeforge.stage.steps import BatchCleaner
from lakeforge.errors import ConfigError

#: Elements after which a line break is kept when HTML becomes text (block-level elements).
BLOCK_ELEMENTS = ("p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table",
                  "ul", "ol", "dl", "dt", "dd", "section", "article", "header", "footer", "aside", "nav",
                  "figure", "figcaption", "form", "hr", "title")
#: Subtrees whose text is never content.
DROPPED_ELEMENTS = ["script", "style", "noscript", "template", "head", "iframe", "object", "svg"]
#: RE2: something that looks like a tag, a comment or a character reference. Only texts matching
#: it are parsed, so plain text such as "x<y then z" (which a parser would read as a tag) is left
#: alone, and most texts skip the parser.
LOOKS_LIKE_HTML = r"</?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?>|<!--|<![A-Za-z]|&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);"


def html_to_text(html: str) -> str:
    """Text of an HTML fragment or document with the Lexbor parser (selectolax): tags and
    comments go, script/style bodies go, entities are decoded, ``<br>`` and block ends become
    line breaks (so paragraphs survive), inline elements join their text without spaces."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    tree.strip_tags(DROPPED_ELEMENTS)
    for node in tree.css("br"):
        node.insert_after("\n")
    for node in tree.css(",".join(BLOCK_ELEMENTS)):
        node.insert_after("\n")
    root = tree.body if tree.body is not None else tree.root
    return root.text(deep=True, separator="", strip=False) if root is not None else ""


class HtmlToText(BatchCleaner):
    """Turn HTML into plain text with a real HTML parser (see :func:`html_to_text`).

    ``Great movie.<br /><br />Loved it`` becomes ``Great movie.\\n\\nLoved it``; escaped markup
    (``&lt;b&gt;``) stays visible as text (``<b>``); ``3 < 5`` is not markup and stays.
    """

    name = "strip_html"

    def clean_texts(self, text):
        has_markup = pc.fill_null(pc.match_substring_regex(text, LOOKS_LIKE_HTML), False)
        if not pc.any(has_markup).as_py():
            return text
        html = text.filter(has_markup).to_pylist()
        return pc.replace_with_mask(text, has_markup, pa.array([html_to_text(h) for h in html], text.type))


class UnicodeNormalizer(BatchCleaner):
    """Unicode normalization (default NFKC): compatibility characters become their plain form —
    ``ﬁ`` → ``fi``, full-width ``ＡＢＣ`` → ``ABC``, ``…`` → ``...``, non-breaking space → space —
    so filters, hashes and dedup see one spelling of each text."""

    name = "normalize_unicode"
    FORMS: ClassVar[tuple[str, ...]] = ("NFC", "NFKC", "NFD", "NFKD")

    def __init__(self, form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFKC"):
        """Args:
            form: the Unicode normalization form.
        """
        if form not in self.FORMS:
            raise ConfigError(f"normalize_unicode form must be one of {self.FORMS}, got {form!r}")
        self.form = form

    def clean_texts(self, text):
        # Not pc.utf8_normalize: pyarrow 25's does not recompose ("e" + U+0301 stays two code points
        # under NFC/NFKC). Python's unicodedata does it right; ASCII-only texts are already normal.
        import unicodedata

        non_ascii = pc.fill_null(pc.match_substring_regex(text, r"[^\x00-\x7F]"), False)
        if not pc.any(non_ascii).as_py():
            return text
        values = [unicodedata.normalize(self.form, t) for t in text.filter(non_ascii).to_pylist()]
        return pc.replace_with_mask(text, non_ascii, pa.array(values, text.type))


class WhitespaceNormalizer(BatchCleaner):
    """Remove control and invisible format characters (zero-width, BOM, soft hyphen, bidi marks),
    collapse whitespace runs to one space, keep paragraph breaks (at most one blank line), trim."""

    name = "normalize_whitespace"

    # (RE2 pattern, replacement), applied in order
    RULES: ClassVar[tuple[tuple[str, str], ...]] = (
        (r"\r\n?|[\x{2028}\x{2029}]", "\n"),  # Windows/old-Mac line ends, Unicode line/paragraph separators
        # control (Cc) and format (Cf) characters, except the whitespace ones the next rule handles
        (r"[\x00-\x08\x0E-\x1F\x7F-\x9F\p{Cf}]", ""),
        (r"[\t\x0B\x0C\p{Zs}]+", " "),  # tabs, vertical tab, form feed, NBSP and every Unicode space
        (r" ?\n ?", "\n"),
        (r"\n{3,}", "\n\n"),
    )

    def clean_texts(self, text):
        for pattern, replacement in self.RULES:
            text = pc.replace_substring_regex(text, pattern, replacement)
        return pc.utf8_trim_whitespace(text)


class Lowercaser(BatchCleaner):
    """Lowercase the text, for models whose tokenizer is case-sensitive but should not be (or to
    match an uncased model's training data). Uncased tokenizers lowercase by themselves: leave this
    step out for them and the curated text keeps its case."""

    name = "lowercase"

    def clean_texts(self, text):
        return pc.utf8_lower(text)
