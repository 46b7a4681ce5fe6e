"""Redaction of personal information in Chinese text: each kind is replaced by a placeholder.

Kinds: phone numbers (mainland mobiles, landlines with an area code), mainland resident ID
numbers (18 digits whose ISO 7064 MOD 11-2 check digit is right, so a long number in a
pharmacopoeia assay is left alone), e-mail addresses, URLs, QQ and WeChat ids (after their
label), and patient names in case-record patterns (患者王某某, 王某，男，45岁).
"""
from __future__ import annotations

import re
from collections import Counter

PLACEHOLDERS = {
    "email": "<email>",
    "url": "<url>",
    "id_number": "<id_number>",
    "phone": "<phone>",
    "qq": "<qq>",
    "wechat": "<wechat>",
    "name": "<name>",
}
KINDS = tuple(PLACEHOLDERS)

# The 100 commonest surnames and the compound ones that case records meet.
SURNAMES = (
    "欧阳|司马|上官|诸葛|东方|皇甫|尉迟|公孙|慕容|长孙|宇文|司徒|夏侯|令狐|"
    "王|李|张|刘|陈|杨|黄|赵|吴|周|徐|孙|马|朱|胡|郭|何|高|林|罗|郑|梁|谢|宋|唐|许|韩|冯|邓|曹|彭|曾|肖|萧|田|董|袁|潘|"
    "于|蒋|蔡|余|杜|叶|程|苏|魏|吕|丁|任|沈|姚|卢|姜|崔|钟|谭|陆|汪|范|金|石|廖|贾|夏|韦|付|傅|方|白|邹|孟|熊|秦|邱|"
    "江|尹|薛|闫|阎|段|雷|侯|龙|史|陶|黎|贺|顾|毛|郝|龚|邵|万|钱|严|覃|武|戴|莫|孔|向|汤|常|温|康|施|文|牛|樊|葛|邢|安|齐|易|乔|伍|庞|颜|倪|庄|聂|章|鲁|岳|翟|殷|詹|申|欧|耿|关|兰|焦|俞|左|柳|甘|祝|包|宁|尚|符|舒|阮|柯|纪|梅|童|凌|毕|单|季|裴|霍|涂|成|苗|谷|盛|曲|翁|冉|骆|蓝|路|游|辛|靳|管|柴|蒙|鲍|华|喻|祁|蒲|房|滕|屈|饶|解|牟|艾|尤|阳|时|穆|农|司|卓|古|吉|缪|简|车|项|连|芦|麦|褚|娄|窦|戚|岑|景|党|宫|费|卜|冷|晏|席|卫|米|柏|宗|瞿|桂|全|佟|应|臧|闵|苟|邬|边|卞|姬|师|和|仇|栾|隋|商|刁|沙|荣|巫|寇|桑|郎|甄|丛|仲|虞|敖|巩|明|佘|池|查|麻|苑|迟|邝"
)
_PATIENT = r"(?:患者|病人|病者|患儿|病员)"

PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "url": re.compile(r"(?:https?://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'*+,;=%]+", re.IGNORECASE),
    "id_number": re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])"),
    "phone": re.compile(r"(?<![\d.])(?:(?:\+|00)?86[- ]?)?(?:1[3-9]\d[- ]?\d{4}[- ]?\d{4}|0\d{2,3}-\d{7,8})(?![\d.])"),
    "qq": re.compile(r"(?:QQ|qq|扣扣|企鹅)\s*(?:号码|号|群)?\s*[:：]?\s*([1-9]\d{4,10})(?!\d)"),
    "wechat": re.compile(r"(?:微信|weixin|wechat|vx|v信|VX|WX|wx)\s*(?:号码|号)?\s*[:：]?\s*([A-Za-z][-_A-Za-z0-9]{5,19}|1[3-9]\d{9})(?![-_A-Za-z0-9])"),
    # 患者王某某 / 病人张某: the patient word, then a surname anonymised with 某, or any name
    # followed by sex and age (王某，男，45岁 / 张三，女，32岁).
    "name": re.compile(
        rf"(?:(?<={_PATIENT})[:：]?\s*((?:{SURNAMES})某{{1,2}}|(?:{SURNAMES})[\u4e00-\u9fff]{{1,2}}(?=[，,、\s（(]*[男女])))"
        rf"|(?:(?<=^)|(?<=[\s，,。；;：:、（(]))((?:{SURNAMES})(?:某{{1,2}}|[\u4e00-\u9fff]{{1,2}}))"
        rf"(?=[，,、\s（(]*[男女][，,、\s]*(?:性[，,、\s]*)?\d{{1,3}}\s*(?:岁|周岁))"
    ),
}

# What every match of the name pattern needs somewhere in the text: a patient word and a
# surname after it (first form), or sex and age (second form). Far cheaper to look for than
# the pattern, which tries its look-behinds at every position; "某" alone passes the screen.
_NAME_POSSIBLE = re.compile(
    rf"{_PATIENT}[:：]?\s*(?:{SURNAMES})|[男女][，,、\s]*(?:性[，,、\s]*)?\d{{1,3}}\s*(?:岁|周岁)"
)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_id_number(number: str) -> bool:
    """Whether an 18-character mainland resident ID number has a correct check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def redact_batch(texts: list[str], kinds: tuple[str, ...] = KINDS, array=None) -> tuple[list[str], Counter]:
    """`redact` over a batch: one RE2 pass over all texts finds the few that may hold personal
    data; only those go through the Python patterns. `array`: the same texts as an Arrow string
    array, when the caller holds them so (not encoded again). A text nothing was found in is
    given back as the same object."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    counts: Counter = Counter()
    if not kinds or not texts:
        return texts, counts
    screen = "|".join(f"(?:{_SCREENS[kind].pattern})" for kind in kinds)
    candidates = pc.match_substring_regex(array if array is not None else pa.array(texts, pa.string()), screen, ignore_case=True)
    out = list(texts)
    for i in np.flatnonzero(candidates.to_numpy(zero_copy_only=False)):
        out[i], found = redact(texts[i], kinds)
        counts.update(found)
    return out, counts


def redact_texts(texts: list[str], kinds: tuple[str, ...] = KINDS) -> tuple[list[str], Counter]:
    """`redact` of each text, exactly (the same screens, Python's patterns), the screens run over
    the batch joined: one search per kind and per text that holds a match, instead of a call and
    seven searches per text. No screen can match across the NUL that joins the texts."""
    import numpy as np

    counts: Counter = Counter()
    if not kinds or not texts:
        return list(texts), counts
    joined = "\0".join(texts)
    spans = np.fromiter((len(text) + 1 for text in texts), np.int64, len(texts))
    starts = np.cumsum(spans) - spans
    screened = np.zeros(len(texts), bool)
    for kind in KINDS:
        if kind not in kinds:
            continue
        position = 0
        while (match := _screen_search(kind, joined, position)) is not None:
            owner = int(np.searchsorted(starts, match.start(), side="right")) - 1
            screened[owner] = True
            if owner + 1 == len(texts):
                break
            position = int(starts[owner + 1])
    out = list(texts)
    for i in np.flatnonzero(screened).tolist():
        out[i], found = redact(texts[i], kinds)
        counts.update(found)
    return out, counts


def redact(text: str, kinds: tuple[str, ...] = KINDS) -> tuple[str, Counter]:
    """The text with each enabled kind replaced by its placeholder, and the count per kind."""
    counts: Counter = Counter()
    # Cheap screens: most texts have no digit run, no @, no URL and no patient word.
    for kind in KINDS:
        if kind not in kinds:
            continue
        pattern = PATTERNS[kind]

        def replace(match: re.Match, kind=kind) -> str:
            if kind == "id_number" and not valid_id_number(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            if kind in ("qq", "wechat", "name"):
                # Keep the label (患者, 微信：) and replace only the identifying part.
                group = next(g for g in range(1, (match.lastindex or 0) + 1) if match.group(g))
                start, end = match.span(group)
                whole = match.group(0)
                return whole[: start - match.start()] + PLACEHOLDERS[kind] + whole[end - match.start() :]
            return PLACEHOLDERS[kind]

        if _may_contain(kind, text) and (kind != "name" or _NAME_POSSIBLE.search(text)):
            text = pattern.sub(replace, text)
    return text, counts


_SCREENS = {
    "email": re.compile(r"@"),
    "url": re.compile(r"https?://|www\.", re.IGNORECASE),
    "id_number": re.compile(r"\d{17}"),
    "phone": re.compile(r"\d{7}"),
    "qq": re.compile(r"qq|扣扣|企鹅", re.IGNORECASE),
    "wechat": re.compile(r"微信|weixin|wechat|vx|v信|wx", re.IGNORECASE),
    "name": re.compile(r"某|[男女][，,、\s]*(?:性[，,、\s]*)?\d{1,3}\s*(?:岁|周岁)"),
}


# The characters a case-insensitive screen's match can open with (Python folds w, h, v and q
# only to their two ASCII cases): the screen is tried only there, instead of at every position
# with case folding.
_SCREEN_OPENINGS = {
    "url": re.compile(r"[hHwW]"),
    "qq": re.compile(r"[qQ扣企]"),
    "wechat": re.compile(r"[微wWvV]"),
}


def _screen_search(kind: str, text: str, position: int = 0) -> re.Match | None:
    """`_SCREENS[kind].search(text, position)`: the same leftmost match."""
    screen = _SCREENS[kind]
    openings = _SCREEN_OPENINGS.get(kind)
    if openings is None:
        return screen.search(text, position)
    for opening in openings.finditer(text, position):
        if (found := screen.match(text, opening.start())) is not None:
            return found
    return None


def _may_contain(kind: str, text: str) -> bool:
    return _screen_search(kind, text) is not None
