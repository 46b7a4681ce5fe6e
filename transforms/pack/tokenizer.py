"""A user's tokenizer for packing: a `tokenizer.json`, or a Hugging Face tokenizer folder.

From a folder it reads what `transformers.AutoTokenizer` would: `tokenizer.json` (the fast
tokenizer, through the `tokenizers` package; `transformers` is not needed), the special tokens of
`tokenizer_config.json` / `special_tokens_map.json`, and the chat template (`chat_template` in
`tokenizer_config.json`, or `chat_template.jinja` beside it), rendered with jinja2 the way
Hugging Face renders it: a sandboxed environment with `trim_blocks` and `lstrip_blocks`, the
`tojson` filter, `raise_exception` and `strftime_now`, and the special tokens as variables.
Nothing is fetched from a hub.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# Looked up, in this order, when neither the config nor the tokenizer folder names an EOS token.
KNOWN_EOS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "<|eot_id|>")


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for packing; the message is one line naming the file."""


def _token_text(value) -> Optional[str]:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class PackTokenizer:
    """A fast tokenizer with the special tokens and chat template of its folder.

    `path`: a tokenizer.json file, or a folder holding one. `eos_token`, `pad_token`: override
    the folder's. `encoder`: "auto" encodes through the tokenizer's tiktoken twin where it has
    one (byte-level BPE; `bpe_twin`), checked against `tokenizers` on a sample of texts;
    "tokenizers" always uses the `tokenizers` library. Raises TokenizerError for a missing or
    unreadable file, or no EOS token."""

    def __init__(self, path: str | Path, eos_token: Optional[str] = None, pad_token: Optional[str] = None, encoder: str = "auto"):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError("pack needs the `tokenizers` package (pip install 'tcm-corpus[tokens]')") from None
        path = Path(path)
        self.path = path
        folder = path if path.is_dir() else path.parent
        tokenizer_file = path / "tokenizer.json" if path.is_dir() else path
        if not tokenizer_file.is_file():
            raise TokenizerError(f"pack.tokenizer: {tokenizer_file} does not exist (give a tokenizer.json or a folder holding one)")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception for a bad file
            raise TokenizerError(f"pack.tokenizer: {tokenizer_file} is not a tokenizer.json ({str(exc).splitlines()[0][:200]})") from None
        self.files = [tokenizer_file]
        config: dict = {}
        if path.is_dir():
            for name in ("special_tokens_map.json", "tokenizer_config.json"):
                file = folder / name
                if file.is_file():
                    try:
                        config.update(json.loads(file.read_text(encoding="utf-8")))
                    except (ValueError, OSError) as exc:
                        raise TokenizerError(f"pack.tokenizer: {file} cannot be read ({exc})") from None
                    self.files.append(file)
        self.config = config
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = folder / "chat_template.jinja"
        if path.is_dir() and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
            self.files.append(jinja_file)
        self.chat_template: Optional[str] = template if isinstance(template, str) and template.strip() else None
        self.special_tokens = {
            key: text
            for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
            if (text := _token_text(config.get(key))) is not None
        }
        self.eos_token = eos_token or self.special_tokens.get("eos_token") or next(
            (name for name in KNOWN_EOS if self.tokenizer.token_to_id(name) is not None), None
        )
        if self.eos_token is None:
            raise TokenizerError(f"pack.tokenizer: {path} names no EOS token; set pack.eos_token")
        self.eos_id = self._id(self.eos_token, "eos_token")
        self.pad_token = pad_token or self.special_tokens.get("pad_token") or self.eos_token
        self.pad_id = self._id(self.pad_token, "pad_token")
        self.special_tokens["eos_token"] = self.eos_token
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        # A post-processor that already ends every text with EOS (some Llama-style tokenizers).
        probe = self.tokenizer.encode("a", add_special_tokens=True).ids
        self.appends_eos = bool(probe) and probe[-1] == self.eos_id
        self._twin_setup(tokenizer_file, encoder)

    # -- the tiktoken twin ------------------------------------------------------------------

    CHECK_FIRST = 4  # texts of each encode_many call checked against `tokenizers`...
    CHECK_EVERY = 64  # ...and one in this many after them

    def _twin_setup(self, tokenizer_file: Path, encoder: str) -> None:
        from collections import Counter

        self.twin = None
        self.twin_reason = "pack.encoder = tokenizers"
        self.affixes: Optional[tuple[list[int], list[int]]] = None
        self.encoded: Counter = Counter()  # texts per encoder, texts checked, differences
        self.switched = False  # the twin differed from `tokenizers` since the flag was cleared
        if encoder != "auto":
            return
        from .bpe_twin import bpe_twin

        try:
            spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.twin_reason = f"tokenizer.json unreadable as JSON ({exc})"
            return
        self.twin, self.twin_reason = bpe_twin(spec)
        if self.twin is None:
            return
        # What the post-processor puts around a text (a BOS, an EOS), from two probes.
        affixes = []
        for text in ("a", "中医 text 123"):
            bare = self.tokenizer.encode(text, add_special_tokens=False).ids
            full = self.tokenizer.encode(text, add_special_tokens=True).ids
            at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
            affixes.append(None if at is None else (full[:at], full[at + len(bare) :]))
        self.affixes = affixes[0] if affixes[0] is not None and affixes[0] == affixes[1] else None

    def _twin_encode(self, texts: list[str], add_special_tokens: bool) -> Optional[list[list[int]]]:
        """Ids from the twin, or None (no twin, or it differed on a checked text: then the twin
        is dropped for good and `switched` is set, so a caller can redo what it encoded)."""
        if self.twin is None or (add_special_tokens and self.affixes is None):
            return None
        ids = self.twin.encode(texts)
        if add_special_tokens:
            prefix, suffix = self.affixes
            if prefix or suffix:
                ids = [prefix + one + suffix for one in ids]
        checked = list(range(min(len(texts), self.CHECK_FIRST))) + list(range(self.CHECK_FIRST, len(texts), self.CHECK_EVERY))
        reference = self.tokenizer.encode_batch([texts[i] for i in checked], add_special_tokens=add_special_tokens)
        self.encoded["checked"] += len(checked)
        for i, expected in zip(checked, reference):
            if ids[i] != expected.ids:
                self.encoded["differences"] += 1
                self.twin = None
                self.twin_reason = f"tiktoken differed from tokenizers on {texts[i][:40]!r}"
                self.switched = True
                return None
        self.encoded["tiktoken"] += len(texts)
        return ids

    @property
    def encoder(self) -> str:
        return "tiktoken" if self.twin is not None else "tokenizers"

    def _id(self, text: str, key: str) -> int:
        token_id = self.tokenizer.token_to_id(text)
        if token_id is None:
            raise TokenizerError(f"pack.{key}: {text!r} is not a token of {self.path}")
        return token_id

    @property
    def fingerprint(self) -> str:
        """sha256 over the tokenizer's files (names and bytes): what the packed ids depend on."""
        digest = hashlib.sha256()
        for file in sorted(self.files, key=lambda f: f.name):
            digest.update(file.name.encode() + b"\0")
            digest.update(file.read_bytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.fingerprint,
            "files": sorted(f.name for f in self.files),
            "vocab_size": self.vocab_size,
            "eos_token": self.eos_token,
            "eos_id": self.eos_id,
            "pad_token": self.pad_token,
            "pad_id": self.pad_id,
            "chat_template": bool(self.chat_template),
            "encoder": self.encoder,
            "encoder_note": "" if self.twin is not None else self.twin_reason,
        }

    def encode_many(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text: through the tiktoken twin when there is one (the same ids,
        checked on a sample), else `tokenizers` in one batch (no offsets)."""
        if not texts:
            return []
        ids = self._twin_encode(texts, add_special_tokens)
        if ids is not None:
            return ids
        self.encoded["tokenizers"] += len(texts)
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The tokenizer's own chat template over `messages` ([{"role", "content"}]), as
        `apply_chat_template(..., tokenize=False)` renders it. Raises TokenizerError without one."""
        if self.chat_template is None:
            raise TokenizerError(f"pack.template: {self.path} has no chat_template; use template = \"huatuo\" or \"chatml\"")
        return compiled_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None, **self.special_tokens
        )


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=8)
def compiled_template(source: str):
    """A chat template compiled once per process, in Hugging Face's jinja environment."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(Extension):
        """`{% generation %}` marks assistant text for HF's assistant masks; here it renders as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """A byte-level BPE tokenizer (the kind Qwen2 and GPT-2 use) trained offline on `texts`.

    For tests and benchmarks, which may not download a real one; returns a tokenizers.Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
