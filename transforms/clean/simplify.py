"""Traditional to simplified Chinese with OpenCC, for what was written in traditional characters
only: simplified text passes through unchanged, byte for byte.

Detection, per text and per line. Evidence characters come from OpenCC's own tables: a
*traditional* character is one t2s changes on its own (參, 乾, 癥), a *simplified* one is one s2t
changes (参, 为, 县). A text is traditional when it holds more traditional than simplified
characters. A line is converted when its own evidence is decisive (at least
`DECISIVE_MARGIN` more traditional than simplified characters: a traditional quotation in a
simplified text), or when it leans traditional and the text is traditional; so 「乾为天」,
「乾安县」 and 「妇人腹中癥瘕积聚」 stay as written, and a lone 「乾卦」 line in a simplified text too.

Variant: the characters OpenCC reads as Taiwan forms only (tw2t changes them, hk2t does not: 裡,
偽, 眾) against those it reads as Hong Kong forms only (hk2t changes them: 衞, 綫, 僞): more Taiwan marks -> tw2s, more
Hong Kong marks -> hk2s, else t2s. A fixed `opencc` setting (t2s, tw2s, hk2s) skips the variant
detection, never the traditional detection.

Terms of the art and of the classics are protected by OpenCC user phrase dictionaries, not by
our own patterns: `resources/opencc_phrases.tsv` (versioned, `traditional<TAB>simplified<TAB>why`)
plus any `[clean] opencc_phrases` files, written as an OpenCC text dictionary that heads every
group of a generated OpenCC JSON config (t2s / tw2s / hk2s chains of OpenCC 1.4, with the
extension-plane table TSCharactersExt left out: it writes characters most fonts lack). The
config and dictionary are written once per process into a folder named by their content hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from .textstats import lookup

VARIANTS = ("t2s", "tw2s", "hk2s")
PHRASES_FILE = "opencc_phrases.tsv"
# A line converts on its own evidence only with this many more traditional than simplified chars.
DECISIVE_MARGIN = 3
# Standard traditional characters the regional tables change only in rare readings (參 -> 蔘).
NOT_REGIONAL = set("參才核")
_HAN_BLOCKS = ((0x3400, 0x4DC0), (0x4E00, 0xA000))
_LINE = re.compile(r"[^\n]*\n?")


class PhraseError(ValueError):
    """A phrase dictionary that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Evidence:
    traditional: re.Pattern
    simplified: re.Pattern
    taiwan: re.Pattern
    hong_kong: re.Pattern


def _opencc():
    import opencc

    return opencc


def _share_dir() -> Path:
    opencc = _opencc()
    return Path(opencc.__file__).parent / "clib" / "share" / "opencc"


def _char_class(chars: set[str]) -> re.Pattern:
    return re.compile("[" + "".join(re.escape(c) for c in sorted(chars)) + "]")


@lru_cache(maxsize=1)
def evidence() -> Evidence:
    """The evidence character classes, from OpenCC's character tables (`_evidence_chars`)."""
    return Evidence(**{name: _char_class(set(chars)) for name, chars in _evidence_chars().items()})


def _evidence_chars() -> dict[str, str]:
    """The characters of each evidence class, worked out from OpenCC's tables once per machine
    (about 0.17 CPU-s) and kept in the temp dir in a file named by what they depend on: OpenCC's
    version and dictionary files (names, sizes, times), and this module's source."""
    opencc = _opencc()
    share = _share_dir()
    tables = "\n".join(f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in sorted(share.iterdir()) if p.is_file())
    source = hashlib.blake2b(Path(__file__).read_bytes(), digest_size=8).hexdigest()
    key = f"{getattr(opencc, '__version__', '')}\n{share}\n{tables}\n{source}"
    path = Path(tempfile.gettempdir()) / f"tcm-corpus-opencc-{os.getuid()}" / f"evidence-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    chars = _worked_out_evidence()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed: another worker may be reading the same file.
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(chars, ensure_ascii=False), encoding="utf-8")
        partial.replace(path)
    except OSError:
        pass  # an unwritable temp dir: worked out again by the next process
    return chars


def _worked_out_evidence() -> dict[str, str]:
    """Each evidence class (the fields of Evidence) as its characters in code point order."""
    opencc = _opencc()
    chars = [chr(cp) for lo, hi in _HAN_BLOCKS for cp in range(lo, hi)]
    joined = "\n".join(chars)

    def changes(config: str) -> dict[str, str]:
        out = opencc.OpenCC(config).convert(joined).split("\n")
        return {a: b for a, b in zip(chars, out) if a != b}

    t2s, s2t = changes("t2s"), changes("s2t")
    # A regional form is one OpenCC maps back to its standard traditional form (裡 -> 裏 for Taiwan).
    taiwan, hong_kong = set(changes("tw2t")) - NOT_REGIONAL, set(changes("hk2t")) - NOT_REGIONAL
    # A character both tables change says nothing about which script a text is in.
    classes = {
        "traditional": set(t2s) - set(s2t),
        "simplified": set(s2t) - set(t2s),
        "taiwan": taiwan - hong_kong,
        "hong_kong": hong_kong - taiwan,
    }
    return {name: "".join(sorted(found)) for name, found in classes.items()}


def read_phrases(paths: tuple[str | Path, ...] = ()) -> list[tuple[str, str]]:
    """(traditional, simplified) pairs of the shipped phrase list, then of each file in `paths`
    (a later file's entry for the same phrase wins). '#' lines and blank lines are skipped; a line
    without two tab-separated fields is a PhraseError."""
    sources = [(PHRASES_FILE, resources.files("transforms.resources").joinpath(PHRASES_FILE).read_text(encoding="utf-8"))]
    for path in paths:
        try:
            sources.append((str(path), Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise PhraseError(f"opencc phrases {path} cannot be read ({exc})") from None
    phrases: dict[str, str] = {}
    for origin, text in sources:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
                raise PhraseError(f"{origin}:{number}: expected 'traditional<TAB>simplified[<TAB>why]'")
            phrases[fields[0].strip()] = fields[1].strip()
    return sorted(phrases.items())


def phrases_version() -> str:
    """The `# version:` of the shipped phrase list."""
    text = resources.files("transforms.resources").joinpath(PHRASES_FILE).read_text(encoding="utf-8")
    match = re.search(r"^# version: *(\S+)", text, re.M)
    return match.group(1) if match else "0"


def _chain(variant: str, user: dict) -> list[dict]:
    def ocd2(name: str, **extra) -> dict:
        return {"type": "ocd2", "file": str(_share_dir() / name), **extra}

    def group(*dicts: dict) -> dict:
        return {"dict": {"type": "group", "match_policy": "short_circuit", "dicts": [user, *dicts]}}

    to_simplified = group(ocd2("TSPhrases.ocd2"), ocd2("TSCharacters.ocd2"))
    regional = {"tw2s": "TW", "hk2s": "HK"}.get(variant)
    if regional is None:
        return [to_simplified]
    return [group(ocd2(f"{regional}VariantsRevPhrases.ocd2"), ocd2(f"{regional}VariantsRev.ocd2")), to_simplified]


@lru_cache(maxsize=8)
def converter(variant: str, phrase_files: tuple[str, ...] = ()):
    """An OpenCC converter for `variant` with the phrase dictionaries at the head of each step."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown OpenCC variant {variant!r} (one of {', '.join(VARIANTS)})")
    phrases = read_phrases(phrase_files)
    body = "".join(f"{src}\t{dst}\n" for src, dst in phrases)
    digest = hashlib.blake2b(f"{variant}\n{_share_dir()}\n{body}".encode(), digest_size=8).hexdigest()
    folder = Path(tempfile.gettempdir()) / f"tcm-corpus-opencc-{os.getuid()}" / digest
    config = folder / f"{variant}.json"
    if not config.exists():
        folder.mkdir(parents=True, exist_ok=True)
        dictionary = folder / "phrases.txt"
        user = {"type": "text", "file": str(dictionary)}
        spec = {
            "name": f"{variant} with protected phrases",
            "normalization": [{"dict": {"type": "ocd2", "file": str(_share_dir() / "CJK_Compatibility_Ideographs.ocd2")}}],
            "conversion_chain": _chain(variant, user),
        }
        # Written beside and renamed: another worker may be reading the same folder.
        for path, content in ((dictionary, body), (config, json.dumps(spec, ensure_ascii=False, indent=1))):
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            partial.write_text(content, encoding="utf-8")
            partial.replace(path)
    return _opencc().OpenCC(str(config))


@dataclass
class Simplified:
    text: str
    changed: int  # characters OpenCC changed (code points that differ; length changes count)
    variant: str | None  # the OpenCC variant used, None when nothing was traditional
    traditional: bool  # the text as a whole was detected as traditional


def detect(text: str) -> tuple[bool, str]:
    """(traditional?, variant) of a whole text."""
    ev = evidence()
    trad, simp = len(ev.traditional.findall(text)), len(ev.simplified.findall(text))
    if trad <= simp:
        return False, "t2s"
    tw, hk = len(ev.taiwan.findall(text)), len(ev.hong_kong.findall(text))
    return True, "tw2s" if tw > hk else "hk2s" if hk > tw else "t2s"


@lru_cache(maxsize=1)
def _traditional_table() -> np.ndarray:
    """Per code point (all planes): whether it is traditional evidence (Evidence.traditional)."""
    pattern = evidence().traditional
    table = np.zeros(0x110000, bool)
    points = sorted(set(range(0x10000)).union(*(range(lo, hi) for lo, hi in _HAN_BLOCKS)))
    table[[cp for cp in points if pattern.match(chr(cp))]] = True
    return table


def may_be_traditional(texts: list[str]) -> np.ndarray:
    """Per text, whether it holds a traditional evidence character: the texts `to_simplified`
    can change; every other text it returns as it is (Simplified(text, 0, None, False)). One
    table look-up over the batch's code points."""
    try:
        points = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    except UnicodeEncodeError:  # a lone surrogate: ask the pattern text by text
        pattern = evidence().traditional
        return np.array([pattern.search(text) is not None for text in texts], bool)
    ends = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
    out = np.zeros(len(texts), bool)
    out[np.searchsorted(ends, np.flatnonzero(lookup(_traditional_table(), points)), side="right")] = True
    return out


def to_simplified(text: str, policy: str | None = "auto", phrase_files: tuple[str, ...] = ()) -> Simplified:
    """The text with its traditional lines converted. `policy`: "auto" (variant detected), a fixed
    variant ("t2s", "tw2s", "hk2s"), or None (no conversion)."""
    ev = evidence()
    if not policy or not ev.traditional.search(text):
        return Simplified(text, 0, None, False)
    traditional, variant = detect(text)
    if policy != "auto":
        variant = policy
    pieces, changed, used = [], 0, False
    for line in _LINE.findall(text):
        trad = len(ev.traditional.findall(line))
        simp = len(ev.simplified.findall(line)) if trad else 0
        if trad and (trad - simp >= DECISIVE_MARGIN or (traditional and trad > simp)):
            converted = converter(variant, phrase_files).convert(line)
            changed += _changed_chars(line, converted)
            used = True
            line = converted
        pieces.append(line)
    return Simplified("".join(pieces) if used else text, changed, variant if used else None, traditional)


def _changed_chars(before: str, after: str) -> int:
    if before == after:
        return 0
    if len(before) == len(after):
        # Code points compared as arrays (a lone surrogate is a code point too).
        ours = np.frombuffer(before.encode("utf-32-le", "surrogatepass"), np.uint32)
        theirs = np.frombuffer(after.encode("utf-32-le", "surrogatepass"), np.uint32)
        return int(np.count_nonzero(ours != theirs))
    return abs(len(before) - len(after)) or 1
