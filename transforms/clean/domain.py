"""TCM domain relevance tags: lexicon density and a fastText classifier's probability.

    tagger = DomainTagger.load(lexicon=Path("lexicon.txt"), model=Path("domain.ftz"))
    columns = tagger.tag(texts)   # {"domain_lexicon": float64[n], "domain_score": float64[n]}

`domain_lexicon` is the share of a text's Han characters covered by lexicon terms (0 without a
lexicon); `domain_score` is the classifier's probability of the TCM label (NaN without a model).
Both are tags: selection decides on thresholds.

The tagger holds only the two paths; the lexicon automaton and the model are loaded on first use
and cached per process, so a tagger pickles small, ships to spawn workers and Spark executors,
and loads once per process, not once per batch.

The classifier reads text as characters (Han characters one token each, Latin words, digit runs
as one token) with word bigrams, not jieba words: jieba is trained on modern Chinese and cuts
classical text and TCM terms apart (益卫/固表), it costs more than the classifier itself, and
character bigrams already carry the two-character words that tell the domain.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

TCM_LABEL = "__label__tcm"
OTHER_LABEL = "__label__other"
# The opening of a text decides its domain as well as the whole of it, at a fixed cost per text.
CLASSIFIER_CHARS = 1000
_TOKEN = re.compile(r"[a-z]+|\d+|\S")
_DIGITS = re.compile(r"\d+")


def classifier_input(text: str | None) -> str:
    """One line of space-separated tokens, the form the classifier is trained and asked on."""
    if not text:
        return ""
    opening = text[:CLASSIFIER_CHARS].lower()
    return " ".join(_TOKEN.findall(_DIGITS.sub("0", opening)))


class DomainTagger:
    """Domain tags of a batch of texts from a lexicon file and a fastText model, either optional."""

    def __init__(self, lexicon: Path | None = None, model: Path | None = None):
        self.lexicon = Path(lexicon) if lexicon is not None else None
        self.model = Path(model) if model is not None else None

    @classmethod
    def load(cls, lexicon: Path | None, model: Path | None) -> "DomainTagger":
        """A tagger for these files; a missing or unreadable file is an error now, not in a worker."""
        tagger = cls(lexicon, model)
        if tagger.lexicon is not None:
            tagger._matcher()
        if tagger.model is not None:
            tagger._classifier()
        return tagger

    def __getstate__(self) -> dict:
        return {"lexicon": self.lexicon, "model": self.model}

    def __setstate__(self, state: dict) -> None:
        self.lexicon, self.model = state["lexicon"], state["model"]

    def __repr__(self) -> str:
        return f"DomainTagger(lexicon={self.lexicon}, model={self.model})"

    def _matcher(self):
        return _load_matcher(str(self.lexicon), *_file_version(self.lexicon))

    def _classifier(self):
        return _load_classifier(str(self.model), *_file_version(self.model))

    def tag(self, texts: list[str]) -> dict[str, np.ndarray]:
        texts = ["" if t is None else t for t in texts]
        if self.lexicon is not None:
            lexicon = self._matcher().density(texts)
        else:
            lexicon = np.zeros(len(texts), np.float64)
        if self.model is not None:
            score = tcm_probability(self._classifier(), texts)
        else:
            score = np.full(len(texts), np.nan, np.float64)
        return {"domain_lexicon": lexicon, "domain_score": score}


def tcm_probability(model, texts: list[str]) -> np.ndarray:
    """P(TCM) per text from a fastText model trained with the two labels."""
    if not texts:
        return np.zeros(0, np.float64)
    labels, probs = model.predict([classifier_input(t) for t in texts], k=2)
    out = np.empty(len(texts), np.float64)
    for i, (names, values) in enumerate(zip(labels, probs)):
        # A label fastText rounds to below its output floor is absent: its probability is ~0.
        chosen = [p for name, p in zip(names, values) if name == TCM_LABEL]
        out[i] = min(max(float(chosen[0]) if chosen else 0.0, 0.0), 1.0)
    return out


def _file_version(path: Path) -> tuple[int, int]:
    """(mtime_ns, size): a rewritten file is loaded again, not served from the cache."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot be read ({exc.strerror})") from None
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4)
def _load_matcher(path: str, mtime_ns: int, size: int):
    from .lexicon import LexiconMatcher, read_lexicon

    return LexiconMatcher(read_lexicon(path))


@lru_cache(maxsize=4)
def _load_classifier(path: str, mtime_ns: int, size: int):
    import fasttext

    try:
        model = fasttext.load_model(path)
    except ValueError as exc:
        raise ValueError(f"domain model {path} cannot be loaded ({exc})") from None
    labels = set(model.get_labels())
    if TCM_LABEL not in labels:
        raise ValueError(f"domain model {path} has no {TCM_LABEL} label (labels: {', '.join(sorted(labels))})")
    return model
