"""Numbers in OCR'd reference text: digit slips repaired where the context is numeric, and
numbers the scan lost found, so that no stated dose or size is wrong.

The pharmacopoeia was scanned and read by OCR, which prints the digit 1 as `l` or `I` and 0 as
`O` or `o` (「5～lOg」, 「取本品粉末lg」, 「每Iml含」, 「6.O%」), and drops some numbers altogether,
leaving a range with an empty side (「～3g」, 「直径～，」, 「一次～」), a unit with no number
(「不得过%」), a ratio with an empty part (「（30：6：5：为展开剂」), a concentration or amount
with none (「每1ml含的溶液」, 「约，精密称定」, 「白矾各。」). A slip is repaired only in a numeric context: a run of digits and look-alike
letters, not touching another Latin letter, that holds a digit or stands beside a range sign
or before a unit. A lost number cannot be repaired: `lost_numbers` names what is missing, and
a caller that states facts (the template answers of transforms/convert/conversion.py) rejects the text.
"""
from __future__ import annotations

import re

# OCR look-alikes of digits, and what they stand for.
_LOOK_ALIKES = str.maketrans({"l": "1", "I": "1", "O": "0", "o": "0"})
_RANGE = "～~"
_UNITS = r"(?:kg|mg|μg|µg|g|ml|mL|μl|µl|μL|L|cm|mm|μm|µm|nm|m|%|℃|°C)"
# A run of digits and look-alikes (with a decimal point inside), not touching a Latin letter
# on the left (C24H3207, H2O stay), followed by a unit, a range sign or a non-letter.
_RUN = re.compile(
    rf"(?<![A-Za-z0-9.])([0-9lIOo](?:[0-9lIOo]|\.(?=[0-9lIOo]))*)(?=({_UNITS})(?![A-Za-z])|[{_RANGE}]|[^A-Za-z]|$)"
)
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# A range sign without a number on one side (a unit or % may follow a number).
_EMPTY_RANGE_LEFT = re.compile(rf"(?<![0-9%a-zA-Zμµ℃)）])[{_RANGE}]")
_EMPTY_RANGE_RIGHT = re.compile(rf"[{_RANGE}](?![0-9])")
# A unit with no number before it, after Han text or punctuation: 「不得过%」, 「每次g，」.
_BARE_UNIT = re.compile(rf"(?<=[\u4e00-\u9fff，。；：、（(])(?:%|(?:kg|mg|g|ml|cm|mm|μm)(?![A-Za-z]))")
# A bound with nothing to bound: 「（一日量不超过）」.
_EMPTY_BOUND = re.compile(r"(?:不超过|不得过|不得少于|不少于|不低于|不高于)(?=[，。；、）)]|$)")
# A decimal point the scan broke: an underscore for it (「1_5～6cm」), or a point with no digit on
# one side (「不得过15.%」, 「不得过.5.0%」).
# A point then a letter is a broken decimal only before a unit: 「1.mg」, not a formula's
# 「C20H17NO4.HCl」 (its 「·」 normalised) or a list's 「1.Thin」.
_BROKEN_DECIMAL = re.compile(
    rf"[0-9]_[0-9]|[0-9]\.(?=[%μ～~，。；、）)]|{_UNITS}(?![A-Za-z]))|(?<![0-9A-Za-z])\.[0-9]"
)
# Units the scan misread right after a number: rn for m (「10rnl」, 「6crn」), p or u for μ
# (「直径60～112pm」, 「5～39um」: no picometre or bare u is a unit here). Not 「rnm」: it is as
# likely nm as mm (「紫外光灯（365rnm)」 is 365nm), so it is left as the scan wrote it.
_UNIT_SLIPS = {"crn": "cm", "rnl": "ml", "rng": "mg", "pm": "μm", "um": "μm"}
# Where μ was read as 「1u」 (「3～451um」 is 45μm beside 「3～201um」 for 20μm) the number itself
# is in doubt: such a 「1um」 is not mended but found as a lost number.
_UNIT_SLIP = re.compile(r"(?<=[0-9])(crn|rnl|rng|pm|(?<![0-9]1)um)(?![A-Za-z])")
_DOUBTFUL_MICRO = re.compile(r"(?<=[0-9])1um(?![A-Za-z])")
# A bracketed ratio with an empty part: 「（30：6：5：为展开剂」, 「（3：：1）」.
_EMPTY_RATIO = re.compile(r"[（(][0-9.]+(?:[：:][0-9.]+)*[：:](?![0-9.])")
# A concentration with no amount: 「制成每1ml含的溶液」.
_EMPTY_CONTENT = re.compile(r"每[0-9.]+\s*(?:ml|mL|μl|g|mg)含(?=[的，。；、])")
# An amount reduced to its qualifier: 「（过三号筛）约，精密称定」, 「用生姜、白矾各。」.
_EMPTY_AMOUNT = re.compile(r"(?:(?<=[）)末品])约|(?<=[\u4e00-\u9fff])各)(?=[，。；、])")


def repair_digits(text: str) -> tuple[str, int]:
    """The text with OCR digit look-alikes in numeric runs replaced by digits, and how many
    runs and units changed. 「5～lOg」 -> 「5～10g」, 「lg」 -> 「1g」, 「Iml」 -> 「1ml」, 「6.O%」 -> 「6.0%」,
    and a unit misread right after a number: 「10rnl」 -> 「10ml」, 「6crn」 -> 「6cm」, 「112pm」 -> 「112μm」;
    letters inside words or formulas (Lour., H2O, l-BORNEOLUM) are left alone."""
    changed = 0

    def fix(match: re.Match) -> str:
        nonlocal changed
        run = match.group(1)
        fixed = run.translate(_LOOK_ALIKES)
        if fixed == run or not _numeric_context(match):
            return run
        changed += 1
        return fixed

    text = _RUN.sub(fix, text)

    def unit(match: re.Match) -> str:
        nonlocal changed
        changed += 1
        return _UNIT_SLIPS[match.group(1)]

    return _UNIT_SLIP.sub(unit, text), changed


def _numeric_context(match: re.Match) -> bool:
    run, unit = match.group(1), match.group(2)
    text, start, end = match.string, match.start(1), match.end(1)
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if any(c.isdigit() for c in run):
        return True
    # Letters only: a number only right before a unit, or beside a range sign.
    return unit is not None or (before != "" and before in _RANGE) or (after != "" and after in _RANGE)


def lost_numbers(text: str) -> list[str]:
    """Fragments (with a little context) where a number is missing: a range with an empty side,
    a unit with no number, a bound with nothing after it, a ratio with an empty part, a
    concentration, 约 or 各 with no amount, a broken decimal point (「1_5」, 「15.%」, 「.5」).
    Empty when every number is there."""
    found = []
    for pattern in (_EMPTY_RANGE_LEFT, _EMPTY_RANGE_RIGHT, _BARE_UNIT, _EMPTY_BOUND, _EMPTY_RATIO, _EMPTY_CONTENT, _EMPTY_AMOUNT, _BROKEN_DECIMAL, _DOUBTFUL_MICRO):
        for match in pattern.finditer(text):
            found.append(text[max(0, match.start() - 4): match.end() + 3])
    return list(dict.fromkeys(found))
