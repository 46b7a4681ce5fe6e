"""The TCM lexicon: terms of the domain with their class, built from reference files.

A lexicon file is UTF-8, one `term<TAB>class` per line, sorted by term, one line per term.
Classes: herb, formula, syndrome, disease, action (what a herb does: 补气升阳), acupoint, meridian,
pulse, tongue, theory, book.

`build_lexicon(paths)` reads each file for what it is, told by its content:
    pharmacopoeia   monograph entries (name, pinyin, Latin lines): the entry titles are herbs;
                    a bracketed alias (`延胡索（元胡）`) is a herb too; the phrases of 【功能与主治】
                    before 用于 are actions (补气升阳，固表止汗)
    terminology     `3.1.1` code lines with a term and its synonyms: a file whose terms mostly
                    end in 证 gives syndromes, any other gives diseases
    classical book  `<篇名>` chapters: formula names are chapter titles and `\\x...\\x` emphasised
                    words that end in 汤 散 丸 饮 膏 丹 and do not open with a word of prose; in a
                    materia medica (a book where at least a third of the chapters open with a
                    taste and a nature: 味甘，微寒 / 苦平 / 辛、甘，平), those chapters' titles
                    are herbs (the classical names: 野葛, 鬼臼, 天雄, 乌喙)
    lexicon list    lines `term<TAB>class` (a list a user curates, or a lexicon built before)
and the seed list shipped beside this module (acupoints, meridians, pulses, tongue signs,
theory, classical book titles), which no file of the references holds.

Lists: `LexiconMatcher.recognises_list(line)` says whether a line is a list of terms (herbs
separated by spaces: a formula's composition, 妊娠禁忌): at least `LIST_MIN_ITEMS` items, of which
at least two and a third are terms (an item is a term when terms cover half its Han characters;
bracketed notes such as （入酒） are not items). Navigation (首页 新闻中心 联系我们) has no term.
`list_matcher(path)` is the matcher the clean stage uses for it: the configured lexicon, else
the default lexicon shipped in the package (the seed list and the words of
resources/tcm_user_dict.txt: common herbs, formulas, syndromes, methods).

Density: `LexiconMatcher.density(texts)` is, per text, the share of its Han characters covered by
lexicon terms, matched leftmost-longest without overlaps by an Aho-Corasick automaton, so
当归补血汤 counts as one formula, not a herb plus three characters. ahocorasick-rs (the Rust
aho-corasick crate) matches the books about 8 times as fast as pyahocorasick's iter_long.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CLASSES = ("herb", "formula", "syndrome", "disease", "action", "acupoint", "meridian", "pulse", "tongue", "theory", "book")
# When one term comes from two kinds of file, the more specific class wins (石膏 the herb, not
# a heading that ends in 膏).
PRECEDENCE = {name: rank for rank, name in enumerate(CLASSES)}
SEED_FILE = "tcm_seed_lexicon.txt"

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
HAN_CHAR = f"[{HAN}]"
TERM = re.compile(f"^{HAN_CHAR}{{2,16}}$")
HAN_PATTERN = re.compile(HAN_CHAR)
BRACKETED = re.compile(r"^(.+?)[（(]([^）)]+)[）)]$")
FORMULA_SUFFIXES = "汤散丸饮膏丹"
FORMULA_HEADING = re.compile(f"(?:<篇名>|\\\\x)\\s*({HAN_CHAR}{{2,11}}[{FORMULA_SUFFIXES}])(?=\\s*(?:$|\\\\x|[（(]))", re.M)
# Prose that happens to end in 汤/丸/散 (此丹, 用丸散, 煎汤, 治火丹) opens with one of these.
PROSE_OPENERS = set("此其又即用服煎熬宜或凡各再仍若以与和共每将")
MIN_BOOK_FORMULA_CHARS = 3
# A chapter title and the first words of its text (after 内容： / 属性：).
CHAPTER_OPENING = re.compile(r"^<篇名>([^\n]+)\n(?:\s*\n)*\s*(?:内容|属性)：\s*([^\n]{0,24})", re.M)
# A materia medica entry opens with its taste and nature: 味甘，微寒。 苦平， 辛、甘，平。 甘温，
TASTE = "[甘苦辛酸咸淡涩]"
MATERIA_MEDICA_OPENING = re.compile(
    rf"^(?:气味|性味)?[：∶]?味?(?:微|大)?{TASTE}(?:[、，,]?(?:微|大)?{TASTE}){{0,2}}[、，,]?\s*(?:气)?(?:微|大|小)?[温寒凉平热]"
)
MATERIA_MEDICA_SHARE = 1 / 3
TITLE_TAG = re.compile(r"^[（(〔][^）)〕]{1,3}[）)〕]|[（(〈〔][^）)〉〕]{0,8}[）)〉〕]$")
# Chapter titles of a materia medica that are its sections, not herbs.
NOT_HERB_SUFFIXES = ("部", "类", "门", "论", "篇", "卷", "品", "序", "例", "目录")
ACTION_SEPARATORS = re.compile(r"[，。；、,;\s]+")
ACTION = re.compile(f"^{HAN_CHAR}{{2,8}}$")
MIN_TERMS_TO_RECOGNISE = 5
# `风证类`, `外感时令类病`: headings that group terms, not terms a text uses.
CATEGORY_SUFFIX = ("类", "类病")
TRAILING_MARKS = "[]()（）,，、 "
# A list line: items separated by spaces or 、; bracketed notes (（入酒）, （各等分）) are no items.
LIST_ITEM_SEPARATORS = re.compile(r"[\s、]+")
BRACKETED_NOTE = re.compile(r"[（(〔【][^（）()〔〕【】]*[）)〕】]")
LIST_MIN_ITEMS = 3
LIST_MIN_TERMS = 2
LIST_TERM_SHARE = 1 / 3
USER_DICT = ("transforms.resources", "tcm_user_dict.txt")


class LexiconError(Exception):
    """A file that is not a lexicon source, or a lexicon file that cannot be read; one line."""


@dataclass
class LexiconBuild:
    terms: dict[str, str] = field(default_factory=dict)  # term -> class
    files: list[dict] = field(default_factory=list)  # per file: path, kind, terms found per class

    def add(self, term: str, cls: str) -> bool:
        term = term.strip()
        if not TERM.match(term):
            return False
        known = self.terms.get(term)
        if known is None or PRECEDENCE[cls] < PRECEDENCE[known]:
            self.terms[term] = cls
        return True

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.terms.values()).items(), key=lambda kv: PRECEDENCE[kv[0]]))


def build_lexicon(paths: Iterable[Path | str], seed: bool = True, strict: bool = True) -> LexiconBuild:
    """Every term of the given files (folders: every .txt file under them) and of the seed list.
    A named file with nothing to read terms from is an error when strict; a file found in a
    folder is only reported as unrecognised."""
    build = LexiconBuild()
    files: list[tuple[Path, bool]] = []  # (file, named by the user rather than found in a folder)
    for path in map(Path, paths):
        if path.is_dir():
            files.extend((p, False) for p in sorted(path.rglob("*.txt")) if not p.name.startswith("."))
        elif path.is_file():
            files.append((path, True))
        else:
            raise LexiconError(f"{path}: no such file or folder")
    if not files and not seed:
        raise LexiconError("no lexicon source files given")
    for file, named in files:
        try:
            kind, found = read_terms(file)
        except LexiconError:
            if named and strict:
                raise
            # A folder may hold texts with nothing to read terms from (a book without chapters).
            kind, found = "unrecognised", []
        build.files.append({"path": str(file), "kind": kind, "terms": _add_all(build, found)})
    if seed:
        build.files.append({"path": SEED_FILE, "kind": "seed", "terms": _add_all(build, seed_terms())})
    return build


def _add_all(build: LexiconBuild, found: list[tuple[str, str]]) -> dict[str, int]:
    """Adds the terms; returns how many distinct terms of each class the file gave."""
    distinct: dict[str, str] = {}
    for term, cls in found:
        if build.add(term, cls):
            distinct.setdefault(term.strip(), cls)
    return dict(Counter(distinct.values()))


def read_terms(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """(kind of file, [(term, class)]) of one reference file; LexiconError if it is none of them."""
    from transforms.ingest.importers.base import SourceError, read_source

    try:
        text = read_source(path).text
    except SourceError as exc:
        raise LexiconError(str(exc)) from None
    lines = [line.strip() for line in text.splitlines()]
    listed = parse_lexicon_lines(lines, path, strict=False)
    if listed is not None:
        return "lexicon", listed
    if "<篇名>" in text:
        return "book", [(name, "formula") for name in book_formulas(text)] + [(name, "herb") for name in book_herbs(text)]
    herbs, actions = pharmacopoeia_terms(lines)
    if len(herbs) >= MIN_TERMS_TO_RECOGNISE:
        return "pharmacopoeia", [(name, "herb") for name in herbs] + [(name, "action") for name in actions]
    terms = terminology_terms(lines)
    if len(terms) >= MIN_TERMS_TO_RECOGNISE:
        heads = [group[0] for group in terms]
        cls = "syndrome" if sum(t.endswith("证") for t in heads) > len(heads) / 2 else "disease"
        names = [term for group in terms for term in group if not term.endswith(CATEGORY_SUFFIX)]
        if cls == "syndrome":
            # The syndrome standard also lists stages of disease (初期, 晚期): not syndromes.
            names = [term for term in names if term.endswith("证")]
        return f"terminology:{cls}", [(term, cls) for term in names]
    raise LexiconError(
        f"{path}: not a lexicon source (no pharmacopoeia entries, terminology codes, <篇名> chapters "
        "or term<TAB>class lines)"
    )


def pharmacopoeia_terms(lines: list[str]) -> tuple[list[str], list[str]]:
    """(herb names, action phrases) of a pharmacopoeia."""
    from transforms.ingest.importers.monographs import MISMATCH, read_entries

    names, actions = [], []
    for _, entry in read_entries(lines):
        if entry["identity"]["status"] == MISMATCH:
            continue  # a heading its own lines contradict names no herb
        names.extend(split_alias(entry["name"]))  # spacing removed, a wrong heading renamed
        function = entry["sections"].get("功能与主治", "")
        # `补气升阳，固表止汗。用于气虚乏力...`: the actions come before 用于, the indications after.
        actions.extend(ACTION_SEPARATORS.split(function.split("用于")[0]) if "用于" in function else [])
    return names, [a for a in actions if ACTION.match(a)]


def split_alias(name: str) -> list[str]:
    """`延胡索（元胡）` -> [延胡索, 元胡]; a plain name -> [name]."""
    bracketed = BRACKETED.match(name)
    if not bracketed:
        return [name]
    return [bracketed.group(1), *re.split(r"[、，,]", bracketed.group(2))]


def terminology_terms(lines: list[str]) -> list[list[str]]:
    """[term, synonym, ...] per entry of a terminology standard."""
    from transforms.ingest.importers.monographs import TERM_CODE, parse_term

    codes = [i for i, line in enumerate(lines) if TERM_CODE.match(line)]
    groups = []
    for start, end in zip(codes, [*codes[1:], len(lines)]):
        term = parse_term(lines[start:end])
        if term is None:
            continue
        names = [name for raw in [term["term"], *term["synonyms"]] for name in split_run_on(raw)]
        groups.append(names)
    return groups


def split_run_on(term: str) -> list[str]:
    """A term line that swallowed its synonym (`邪闭经络证经络闭阻证`) -> both terms."""
    term = term.strip().rstrip(TRAILING_MARKS)
    if term.endswith("证") and "证" in term[2:-3]:
        parts = [p + "证" for p in term[:-1].split("证")]
        if all(len(p) >= 3 for p in parts):
            return [p for p in parts if TERM.match(p)]
    return [term]


def book_formulas(text: str) -> list[str]:
    names = []
    for name in FORMULA_HEADING.findall(text):
        if len(name) >= MIN_BOOK_FORMULA_CHARS and name[0] not in PROSE_OPENERS:
            names.append(name)
    return names


def book_herbs(text: str) -> list[str]:
    """Titles of the chapters that open like a materia medica entry, in a book where at least
    `MATERIA_MEDICA_SHARE` of the chapters do; none in any other book."""
    chapters = CHAPTER_OPENING.findall(text.replace("\r\n", "\n").replace("\r", "\n"))
    herbs = [clean_herb_title(title) for title, opening in chapters if MATERIA_MEDICA_OPENING.match(opening)]
    if not chapters or len(herbs) < MATERIA_MEDICA_SHARE * len(chapters):
        return []
    return [name for name in herbs if name and TERM.match(name) and not name.endswith(NOT_HERB_SUFFIXES)]


def clean_herb_title(title: str) -> str:
    """`【熟地】` -> 熟地; `（补）人参` -> 人参; `枸杞子（附）`, `薏苡仁〈平〉` -> the name alone."""
    title = TITLE_TAG.sub("", title.strip().strip("【】[]"))
    return title.strip()


def parse_lexicon_lines(lines: list[str], origin: Path | str, strict: bool = True) -> list[tuple[str, str]] | None:
    """`term<TAB>class` lines ('#' comments and blank lines skipped). Not strict: None when the
    file is not such a list; strict: a bad line is a LexiconError naming it."""
    entries = []
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or parts[1].strip() not in PRECEDENCE:
            if strict:
                raise LexiconError(f"{origin}:{number}: expected 'term<TAB>class' with class one of {', '.join(CLASSES)}")
            return None
        entries.append((parts[0].strip(), parts[1].strip()))
    return entries if entries or strict else None


def seed_terms() -> list[tuple[str, str]]:
    text = resources.files(__package__).joinpath(SEED_FILE).read_text(encoding="utf-8")
    return parse_lexicon_lines(text.splitlines(), SEED_FILE)


def write_lexicon(build: LexiconBuild, output: Path | str) -> Path:
    """Sorted, one `term<TAB>class` per line; written beside and renamed, so a reader never sees
    half a file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text("".join(f"{term}\t{cls}\n" for term, cls in sorted(build.terms.items())), encoding="utf-8")
    partial.replace(output)
    return output


def read_lexicon(path: Path | str) -> dict[str, str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LexiconError(f"lexicon {path} cannot be read ({exc})") from None
    return dict(parse_lexicon_lines(lines, path))


class LexiconMatcher:
    """Leftmost-longest matching of lexicon terms over batches of texts."""

    def __init__(self, terms: Iterable[str]):
        import ahocorasick_rs

        terms = list(terms)
        if not terms:
            raise LexiconError("the lexicon holds no terms")
        self.automaton = ahocorasick_rs.AhoCorasick(terms, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest)

    def matched_chars(self, text: str) -> int:
        # Terms are Han only, so every matched character is a Han character.
        return sum(end - start for _, start, end in self.automaton.find_matches_as_indexes(text))

    def recognises_list(self, line: str) -> bool:
        """Whether `line` is a list of domain terms (see the module's docstring)."""
        items = [item for item in LIST_ITEM_SEPARATORS.split(BRACKETED_NOTE.sub(" ", line)) if HAN_PATTERN.search(item)]
        if len(items) < LIST_MIN_ITEMS:
            return False
        terms = sum(1 for item in items if 2 * self.matched_chars(item) >= len(HAN_PATTERN.findall(item)))
        return terms >= LIST_MIN_TERMS and terms >= LIST_TERM_SHARE * len(items)

    def density(self, texts: list[str]) -> np.ndarray:
        """Matched Han characters / Han characters, per text; 0 for a text with no Han."""
        han = pc.count_substring_regex(pa.array(texts, pa.large_string()), HAN_CHAR).to_numpy(zero_copy_only=False)
        matched = np.fromiter((self.matched_chars(t) if n else 0 for t, n in zip(texts, han)), np.float64, len(texts))
        return np.where(han > 0, matched / np.maximum(han, 1), 0.0)


def default_terms() -> list[str]:
    """The lexicon a build has without one of its own: the seed list and the shipped jieba
    dictionary's words (herbs, formulas, syndromes, methods, acupoints)."""
    package, name = USER_DICT
    text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    words = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return sorted({term for term, _ in seed_terms()} | {w for w in words if TERM.match(w)})


def list_matcher(path: Path | str | None = None) -> LexiconMatcher:
    """The matcher of a lexicon file (`flows lexicon build`), or of `default_terms()` without one;
    loaded once per process and file version. LexiconError if the file cannot be read."""
    if path is None:
        return _default_matcher()
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise LexiconError(f"lexicon {path} cannot be read ({exc.strerror})") from None
    return _file_matcher(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1)
def _default_matcher() -> LexiconMatcher:
    return LexiconMatcher(default_terms())


@lru_cache(maxsize=4)
def _file_matcher(path: str, mtime_ns: int, size: int) -> LexiconMatcher:
    return LexiconMatcher(read_lexicon(path))
