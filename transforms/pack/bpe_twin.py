"""A byte-level BPE tokenizer.json run by tiktoken: the same token ids, 3-4x less CPU.

GPT-2-style byte-level BPE tokenizers (GPT-2, Qwen, Llama 3, DeepSeek and the ones trained with
`tokenizers`' ByteLevel pre-tokenizer) split text with one regular expression, map each piece
to bytes and merge byte pairs by rank. tiktoken implements that algorithm (Qwen's own releases
ship their vocabulary as tiktoken ranks), much faster than `tokenizers`. `bpe_twin` builds a
`tiktoken.Encoding` from a tokenizer.json when the tokenizer is of that kind:

- model `BPE` without dropout, subword prefix/suffix or byte fallback; every vocabulary entry is
  byte-level text (one of the 256 byte characters per byte), every merge result ranks after the
  pieces it joins and merges come in rank order (tiktoken merges by the rank of the result,
  `tokenizers` by the merge's place in the list: the same order then);
- pre-tokenizer `ByteLevel` with its own regex (GPT-2's pattern) and no prefix space, or a
  `Sequence` of one `Split` by a regex (isolated) and a regex-less `ByteLevel`;
- no normalizer, or NFC (applied in Python before tiktoken);
- added tokens matched as whole strings (no lstrip/rstrip/single_word, not normalized): they
  become tiktoken's special tokens, allowed everywhere, as `tokenizers` finds them in any text.

Anything else gets `None` and a reason; the caller keeps `tokenizers`. The twin is a speed-up,
never a second opinion: `PackTokenizer.encode_many` checks its ids against `tokenizers` on a
sample of texts and falls back at the first difference.
"""
from __future__ import annotations

import unicodedata
from typing import Optional

# GPT-2's pre-tokenizer pattern: what `tokenizers`' ByteLevel(use_regex=True) splits by.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, reversed (character -> byte)."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = kept[:]
    extra = 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, chars)}


def _pattern(pre: Optional[dict]) -> tuple[Optional[str], str]:
    if not pre:
        return None, "no pre-tokenizer"
    kind = pre.get("type")
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            return None, "ByteLevel adds a prefix space"
        if not pre.get("use_regex", True):
            return None, "ByteLevel without a regex and no Split before it"
        return GPT2_PATTERN, ""
    if kind == "Sequence":
        steps = pre.get("pretokenizers") or []
        if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
            split, level = steps
            regex = (split.get("pattern") or {}).get("Regex")
            if regex is None or split.get("behavior") != "Isolated" or split.get("invert"):
                return None, "a Split that is not an isolated regex"
            if level.get("use_regex", True) or level.get("add_prefix_space"):
                return None, "a ByteLevel step with its own regex or a prefix space"
            return regex, ""
    return None, f"pre-tokenizer {kind} is not byte-level BPE's"


def _normalizer(norm: Optional[dict]) -> tuple[Optional[str], str]:
    if not norm:
        return "", ""
    if norm.get("type") == "NFC":
        return "NFC", ""
    if norm.get("type") == "Sequence" and [n.get("type") for n in norm.get("normalizers") or []] in ([], ["NFC"]):
        return ("NFC" if norm.get("normalizers") else ""), ""
    return None, f"normalizer {norm.get('type')}"


def bpe_twin(spec: dict) -> tuple[Optional["BpeTwin"], str]:
    """The tiktoken twin of a parsed tokenizer.json, or (None, why not).

    Raises nothing: a tokenizer that is not byte-level BPE, or tiktoken not installed, is a reason."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None, f"model {model.get('type')} is not BPE"
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("byte_fallback"):
        return None, "BPE with dropout, subword affixes or byte fallback"
    pattern, why = _pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return None, why
    normal, why = _normalizer(spec.get("normalizer"))
    if normal is None:
        return None, why
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") or (t.get("normalized") and normal) for t in added):
        return None, "added tokens with strip, single-word or normalized matching"
    special = {t["content"]: int(t["id"]) for t in added}
    decoder = _byte_decoder()
    vocab = model.get("vocab") or {}
    ranks: dict[bytes, int] = {}
    for token, rank in vocab.items():
        if token in special:
            continue
        try:
            ranks[bytes(decoder[c] for c in token)] = int(rank)
        except KeyError:
            return None, f"vocabulary entry {token[:20]!r} is not byte-level text"
    if len(set(ranks.values())) != len(ranks) or any(bytes([b]) not in ranks for b in range(256)):
        return None, "the vocabulary lacks a byte or repeats a rank"
    by_text = {token: int(rank) for token, rank in vocab.items()}
    last = -1
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        joined = by_text.get(left + right)
        if joined is None or joined <= max(by_text.get(left, -1), by_text.get(right, -1)) or joined <= last:
            return None, "merges are not in the order of their results' ranks"
        last = joined
    try:
        encoding = tiktoken.Encoding("tokenizer.json", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    except Exception as exc:  # noqa: BLE001 - tiktoken raises ValueError or a regex error for a pattern it cannot compile
        return None, f"tiktoken refused it ({str(exc).splitlines()[0][:120]})"
    return BpeTwin(encoding, normal), ""


class BpeTwin:
    """tiktoken encoding of a tokenizer.json (see `bpe_twin`)."""

    name = "tiktoken"

    def __init__(self, encoding, normal: str):
        self.encoding = encoding
        self.normal = normal

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, with added tokens found anywhere in it (`tokenizers`' rule)."""
        if self.normal:
            texts = [t if unicodedata.is_normalized(self.normal, t) else unicodedata.normalize(self.normal, t) for t in texts]
        encode = self.encoding.encode
        return [encode(text, allowed_special="all", disallowed_special=()) for text in texts]
