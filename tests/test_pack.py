"""The pack stage: rendering and labels, packing order, overflow, the ledger, the outputs, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pack_fixtures import SYSTEM_PROMPT, corpus_rows, make_tokenizer_folder, write_corpus

pytest.importorskip("tokenizers", reason="the pack stage needs the tokenizers package (test extra)")

from schemas import CORPUS_SCHEMA  # noqa: E402
from schemas.dataset import StageManifest, read_manifest  # noqa: E402
from transforms.engines.local import LocalEngine  # noqa: E402
from transforms.pack.packing import best_fit, greedy  # noqa: E402
from transforms.pack.render import IGNORE_INDEX  # noqa: E402
from transforms.pack.stage import pack_table, run_pack  # noqa: E402
from transforms.pack.tokenizer import PackTokenizer, TokenizerError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 1024


@pytest.fixture(scope="session")
def tokenizer_dir(shared_data, tmp_path_factory) -> Path:
    return make_tokenizer_folder(shared_data, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def rows(shared_data) -> list[dict]:
    return corpus_rows(shared_data)


@pytest.fixture(scope="session")
def corpus_dir(rows, tmp_path_factory) -> Path:
    return write_corpus(rows, tmp_path_factory.mktemp("corpus"))


def params(tokenizer_dir, **overrides) -> dict:
    base = {"tokenizer": str(tokenizer_dir), "seq_len": SEQ_LEN, "template": "tokenizer", "packing": "best_fit", "window": 50,
            "overflow": {"text": "split", "chat": "reject"}, "pad_to_multiple_of": None, "eos_token": None, "pad_token": None,
            "outputs": [], "row_group_rows": 16}
    return {**base, **overrides}


def packed(rows, tokenizer_dir, **overrides):
    table = pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA)
    p = params(tokenizer_dir, **overrides)
    return pack_table(table, PackTokenizer(tokenizer_dir), p)


def items_of(sequences: pa.Table):
    """(item id, offset, ids, labels, positions) of every packed item, in row order."""
    out = []
    for row in sequences.to_pylist():
        start = 0
        for item_id, offset, n in zip(row["item_ids"], row["item_offsets"], row["seq_lens"]):
            out.append((item_id, offset, row["input_ids"][start : start + n], row["labels"][start : start + n], row["position_ids"][start : start + n]))
            start += n
    return out


def trained_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("template", ["tokenizer", "huatuo", "chatml"])
def test_only_answers_and_their_end_are_trained(rows, tokenizer_dir, template):
    tokenizer = PackTokenizer(tokenizer_dir)
    chats = [r for r in rows if r["format"] == "chat"][:40]
    sequences, rejected, figures = packed(chats, tokenizer_dir, template=template, seq_len=2048)
    assert set(rejected.column("reason").to_pylist()) <= {"no_answer"} or rejected.num_rows <= 2
    by_id = {r["id"]: r for r in chats}
    ends = {"tokenizer": "<|im_end|>\n", "huatuo": "<|im_end|>", "chatml": "<|im_end|>"}[template]
    checked = 0
    for item_id, _, ids, labels, _ in items_of(sequences):
        messages = by_id[item_id]["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        prompts = [m["content"] for m in messages if m["role"] != "assistant"]
        # Decoding the labels back to text gives the answers, each with the token that ends it.
        runs = [tokenizer.tokenizer.decode(run, skip_special_tokens=False) for run in trained_runs(labels)]
        assert runs == [answer + ends for answer in answers]
        trained_text = "".join(runs)
        assert not any(len(p) > 8 and p in trained_text for p in prompts)
        assert SYSTEM_PROMPT not in trained_text and "<问>" not in trained_text and "<|im_start|>" not in trained_text
        # And the input holds the whole dialogue.
        whole = tokenizer.tokenizer.decode(ids, skip_special_tokens=False)
        assert all(m["content"] in whole for m in messages)
        checked += 1
    assert checked >= 30
    assert figures["trained_by_category"]["sft"] == sum(1 for r in sequences.column("labels").combine_chunks().values.to_pylist() if r != IGNORE_INDEX)


def test_huatuo_template_renders_the_release_turns(rows, tokenizer_dir):
    tokenizer = PackTokenizer(tokenizer_dir)
    chat = next(r for r in rows if r["format"] == "chat" and r["messages"][0]["role"] == "user" and len(r["messages"]) >= 4)
    sequences, _, _ = packed([chat], tokenizer_dir, template="huatuo")
    (item_id, _, ids, labels, _), = items_of(sequences)
    text = tokenizer.tokenizer.decode(ids, skip_special_tokens=False)
    m = chat["messages"]
    assert text.startswith(f"<问>：{m[0]['content']}\n<答>：{m[1]['content']}<|im_end|>\n<问>：{m[2]['content']}\n<答>：")


def test_text_rows_train_every_token_and_end_with_eos(rows, tokenizer_dir):
    tokenizer = PackTokenizer(tokenizer_dir)
    texts = [r for r in rows if r["format"] == "text"][:30]
    sequences, rejected, _ = packed(texts, tokenizer_dir, seq_len=4096)
    assert rejected.num_rows == 0
    by_id = {r["id"]: r["text"] for r in texts}
    for item_id, _, ids, labels, positions in items_of(sequences):
        assert ids[-1] == tokenizer.eos_id
        assert tokenizer.tokenizer.decode(ids[:-1]) == by_id[item_id]
        # Every token trained but the first, which nothing in its item predicts.
        assert labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]
        assert positions == list(range(len(ids)))


def test_every_item_in_exactly_one_row_in_order_greedy(rows, tokenizer_dir):
    sequences, rejected, figures = packed(rows, tokenizer_dir, packing="greedy")
    packed_ids = [item_id for item_id, offset, *_ in items_of(sequences) if offset == 0]
    expected = [r["id"] for r in sorted(rows, key=lambda r: r["position"]) if r["id"] not in set(rejected.column("id").to_pylist())]
    assert packed_ids == expected  # each once, in corpus order
    lengths = [sum(r) for r in sequences.column("seq_lens").to_pylist()]
    firsts = [r[0] for r in sequences.column("seq_lens").to_pylist()[1:]]
    # Greedy: a row was closed only because the next item did not fit.
    assert all(used + nxt > SEQ_LEN for used, nxt in zip(lengths, firsts))
    assert len(rows) == figures["rows_packed"] + figures["rows_rejected"]


def test_best_fit_keeps_items_within_their_window_and_pads_less(rows, tokenizer_dir):
    window = 50
    sequences, rejected, figures = packed(rows, tokenizer_dir, packing="best_fit", window=window)
    greedy_figures = packed(rows, tokenizer_dir, packing="greedy")[2]
    order = {r["id"]: r["position"] for r in rows}
    rejected_ids = set(rejected.column("id").to_pylist())
    pieces = [(item_id, offset) for row in sequences.to_pylist() for item_id, offset in zip(row["item_ids"], row["item_offsets"])]
    # The stream of items in corpus order (a split text's pieces one after another).
    stream = {piece: k for k, piece in enumerate(sorted(pieces, key=lambda p: (order[p[0]], p[1])))}
    seen = Counter()
    for row in sequences.to_pylist():
        mine = [stream[p] for p in zip(row["item_ids"], row["item_offsets"])]
        seen.update(zip(row["item_ids"], row["item_offsets"]))
        assert len({k // window for k in mine}) == 1  # never two windows in one row ...
        assert mine == sorted(mine)  # ... and in corpus order inside it
    assert set(seen.values()) == {1}
    assert {i for i, _ in seen} == set(order) - rejected_ids
    assert figures["padding_tokens"] < greedy_figures["padding_tokens"]
    assert figures["sequences"] <= greedy_figures["sequences"]


def test_packing_functions_on_lengths():
    lengths = np.array([5, 3, 8, 2, 7, 1, 9, 4])
    assert greedy(lengths, 10).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    bins = best_fit(lengths, 10, window=4)
    for b in set(bins.tolist()):
        assert lengths[bins == b].sum() <= 10
        assert len({i // 4 for i in np.flatnonzero(bins == b)}) == 1
    # Sequences numbered by their earliest item: the output follows corpus order.
    firsts = [int(np.flatnonzero(bins == b)[0]) for b in range(bins.max() + 1)]
    assert firsts == sorted(firsts)


def test_overflow_split_truncate_reject(rows, tokenizer_dir):
    tokenizer = PackTokenizer(tokenizer_dir)
    long_text = next(r for r in rows if r["format"] == "text" and len(r["text"]) > 3 * SEQ_LEN)
    long_chat = max((r for r in rows if r["format"] == "chat"), key=lambda r: len(r["messages"][-1]["content"]))
    whole = tokenizer.tokenizer.encode(long_text["text"]).ids + [tokenizer.eos_id]
    sequences, rejected, figures = packed([long_text, long_chat], tokenizer_dir)  # split / reject
    pieces = [(offset, ids) for item_id, offset, ids, *_ in items_of(sequences) if item_id == long_text["id"]]
    assert [o for o, _ in pieces] == list(range(0, len(whole), SEQ_LEN))
    assert [t for _, ids in pieces for t in ids] == whole  # nothing lost, nothing repeated
    assert figures["split_rows"] == 1 and figures["split_pieces"] == len(pieces)
    assert rejected.column("id").to_pylist() == [long_chat["id"]]
    assert rejected.column("reason")[0].as_py().startswith(f"too_long:tokens=")
    sequences, rejected, figures = packed([long_text, long_chat], tokenizer_dir, overflow={"text": "truncate", "chat": "truncate"})
    assert rejected.num_rows == 0 and figures["truncated_rows"] == 2
    assert sorted(len(ids) for *_, ids, _, _ in items_of(sequences)) == [SEQ_LEN, SEQ_LEN]
    assert figures["truncated_tokens"] > 0 and set(figures["truncated_ids"]) == {long_text["id"], long_chat["id"]}
    sequences, rejected, figures = packed([long_text], tokenizer_dir, overflow={"text": "reject", "chat": "reject"})
    assert sequences.num_rows == 0 and rejected.num_rows == 1


def test_position_ids_item_ids_and_padding_agree(rows, tokenizer_dir):
    tokenizer = PackTokenizer(tokenizer_dir)
    for pad in (None, 64, 1):
        sequences, _, figures = packed(rows[:150], tokenizer_dir, pad_to_multiple_of=pad)
        for row in sequences.to_pylist():
            n, used = len(row["input_ids"]), sum(row["seq_lens"])
            assert len(row["labels"]) == len(row["position_ids"]) == n
            assert len(row["item_ids"]) == len(row["seq_lens"]) == len(row["item_offsets"])
            assert n == (SEQ_LEN if pad is None else -(-used // pad) * pad)
            # position ids restart at 0 exactly where an item starts (and where padding starts).
            starts = np.cumsum([0, *row["seq_lens"]])[:-1].tolist() + ([used] if n > used else [])
            assert [i for i, p in enumerate(row["position_ids"]) if p == 0] == starts
            assert row["input_ids"][used:] == [tokenizer.pad_id] * (n - used)
            assert row["labels"][used:] == [IGNORE_INDEX] * (n - used)
        if pad == 1:
            assert figures["padding_tokens"] == 0


def test_tokenizer_json_alone_and_bad_tokenizers(tokenizer_dir, tmp_path, rows):
    alone = PackTokenizer(tokenizer_dir / "tokenizer.json")  # no folder: EOS by a known name
    assert alone.eos_token == "<|endoftext|>" and alone.chat_template is None
    texts = [r for r in rows if r["format"] == "text"][:5]
    sequences, _, _ = pack_table(pa.Table.from_pylist(texts, schema=CORPUS_SCHEMA), alone, params(tokenizer_dir / "tokenizer.json", template="huatuo"))
    assert sequences.num_rows == 1
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        PackTokenizer(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="does not exist"):
        PackTokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="eos_token"):
        PackTokenizer(tokenizer_dir, eos_token="<nope>")


def test_stage_ledger_manifest_and_outputs(corpus_dir, rows, tokenizer_dir, tmp_path):
    from transforms.pack.megatron import read_megatron

    manifest = StageManifest(stage="pack")
    out = tmp_path / "packed"
    result = run_pack([corpus_dir], out, params(tokenizer_dir, outputs=["megatron", "hf"]), manifest, LocalEngine(1))
    figures = result.stats["pack"]
    assert result.rows_in["corpus"] == len(rows) == result.rows_kept["corpus"] + result.rows_rejected["corpus"]
    rejected = pq.read_table(out / "rejected" / "corpus")
    reasons = rejected.column("reason").to_pylist()
    # The dialogue without an answer, the one made too long, and any real one over seq_len.
    assert Counter(r.split(":")[0] for r in reasons)["no_answer"] == 1 and len(reasons) <= 4
    assert all(int(r.split("tokens=")[1].split(">")[0]) > SEQ_LEN for r in reasons if r.startswith("too_long"))
    assert read_manifest(out).rows_out["sequences"] == figures["sequences"]
    shards = sorted((out / "sequences").glob("part-*.parquet"))
    assert [s.name for s in shards] == ["part-00000.parquet", "part-00001.parquet"]  # one per corpus shard
    import hashlib

    assert [f["sha256"] for f in figures["shards"]] == [hashlib.sha256(s.read_bytes()).hexdigest() for s in shards]
    assert len(figures["tokenizer"]["sha256"]) == 64
    assert set(figures["tokens_by_category"]) == {"encyclopedia", "sft"}
    assert 0 < figures["padding_share"] < 0.2 and figures["items_per_sequence"] > 1
    table = pq.read_table(out / "sequences")
    assert figures["tokens"] == sum(sum(s) for s in table.column("seq_lens").to_pylist())
    # Megatron: every item a document, the tokens those of the packed rows without padding.
    lengths, pointers, documents, data = read_megatron(out / "megatron" / "tokens")
    assert lengths.tolist() == [n for s in table.column("seq_lens").to_pylist() for n in s]
    assert documents.tolist() == list(range(len(lengths) + 1))
    first_row = table.slice(0, 1).to_pylist()[0]
    assert data[: sum(first_row["seq_lens"])].tolist() == first_row["input_ids"][: sum(first_row["seq_lens"])]
    assert pointers[1] == lengths[0] * data.itemsize
    mask = read_megatron(out / "megatron" / "tokens_loss_mask")[3]
    assert int(mask.sum()) == figures["trained_tokens"]
    # Hugging Face datasets folder.
    import datasets

    hf = datasets.load_from_disk(str(out / "hf"))
    assert hf.num_rows == figures["sequences"] and hf[0]["input_ids"] == table.column("input_ids")[0].as_py()
    lens = first_row["seq_lens"]
    assert hf[0]["attention_mask"] == [k + 1 for k, n in enumerate(lens) for _ in range(n)] + [0] * (len(first_row["input_ids"]) - sum(lens))


def test_two_workers_write_what_one_writes(corpus_dir, tokenizer_dir, tmp_path):
    one = run_pack([corpus_dir], tmp_path / "one", params(tokenizer_dir), StageManifest(stage="pack"), LocalEngine(1))
    two = run_pack([corpus_dir], tmp_path / "two", params(tokenizer_dir), StageManifest(stage="pack"), LocalEngine(2))
    assert [f["sha256"] for f in one.stats["pack"]["shards"]] == [f["sha256"] for f in two.stats["pack"]["shards"]]


def _flows(*args, home: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def test_config_section_is_checked(tmp_path):
    from flows.config import ConfigError, parse_config

    config = parse_config("[pack]\ntokenizer = 'tok'\nseq_len = 2048\noverflow = { chat = 'truncate' }\n", tmp_path)
    assert config.pack.tokenizer == tmp_path / "tok" and config.pack.overflow.text == "split"
    for bad, key in (("packing = 'random'", "pack.packing"), ("seq_len = 4", "pack.seq_len"), ("overflow = { chat = 'split' }", "pack.overflow.chat"),
                     ("pad_to_multiple_of = 8192", "pad_to_multiple_of"), ("tokeniser = 'x'", "pack.tokeniser")):
        with pytest.raises(ConfigError, match=key):
            parse_config(f"[pack]\n{bad}\n", tmp_path)


@pytest.mark.slow
def test_flows_run_pack(corpus_dir, tokenizer_dir, tmp_path, prefect_home):
    config = tmp_path / "build.toml"
    config.write_text(f"[pack]\ntokenizer = '{tokenizer_dir}'\nseq_len = {SEQ_LEN}\n", encoding="utf-8")
    out = tmp_path / "packed"
    done = _flows("run", "pack", "--input", str(corpus_dir), "--output", str(out), "--config", str(config), home=prefect_home)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "packed: " in done.stdout and "sequences of 1024 tokens" in done.stdout
    assert read_manifest(out).stats["pack"]["rows_in"] == 360
    # Mistakes are one line and exit 2, before any work.
    config.write_text(f"[pack]\ntokenizer = '{tmp_path / 'missing'}'\n", encoding="utf-8")
    done = _flows("run", "pack", "--input", str(corpus_dir), "--output", str(tmp_path / "x"), "--config", str(config), home=prefect_home)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
    config.write_text("[pack]\nseq_len = 1024\n", encoding="utf-8")
    done = _flows("run", "pack", "--input", str(corpus_dir), "--output", str(tmp_path / "x"), "--config", str(config), home=prefect_home)
    assert done.returncode == 2 and "pack.tokenizer: not set" in done.stderr


@pytest.mark.slow
def test_build_corpus_packs_last_when_a_tokenizer_is_set(tokenizer_dir, tmp_path, prefect_home):
    sample = REPO / "flows" / "sample"
    config = tmp_path / "build.toml"
    config.write_text(
        f"""
[[sources]]
name = "sample-book"
kind = "files"
path = "{sample / 'books'}"
format = "book"
category = "books"

[[sources]]
name = "sample-dialogues"
kind = "dataset"
path = "{sample / 'dialogues' / 'tcm_dialogues.jsonl'}"
format = "instructions"
category = "sft"

[validate]
every_stage = false

[export]
formats = []

[pack]
tokenizer = "{tokenizer_dir}"
seq_len = {SEQ_LEN}

[engine]
workers = 1
""",
        encoding="utf-8",
    )
    workdir = tmp_path / "build"
    done = _flows("run", "build-corpus", "--config", str(config), "--workdir", str(workdir), home=prefect_home, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    corpus_rows_out = read_manifest(workdir / "corpus").rows_out["corpus"]
    packed_manifest = read_manifest(workdir / "packed")
    assert packed_manifest.rows_in == {"corpus": corpus_rows_out}
    assert packed_manifest.stats["pack"]["sequences"] > 0 and "packed: " in done.stdout


# -- the tiktoken twin of a byte-level BPE ------------------------------------------------------


def _texts_for_twin(rows: list[dict]) -> list[str]:
    """Real corpus text and dialogue turns, ChatML scaffolding with special tokens inside, and
    whitespace, digits, Latin and decomposed accents around them."""
    texts = [r["text"] for r in rows if r["text"]]
    texts += [m["content"] for r in rows if r["messages"] for m in r["messages"]]
    texts += [f"<|im_start|>user\n{m['content']}<|im_end|>\n<|im_start|>assistant\n" for r in rows[:40] if r["messages"] for m in r["messages"][:1]]
    texts += ["  黄芪 30g，当归 6 g  \n\n  ", "Astragali Radix 2020年版 第一部", "café cafe\u0301 ＣＡＦÉ", "<|endoftext|><|endoftext|>x", "", " ", "\t\r\n"]
    return texts


def _qwen_style_tokenizer(texts: list[str], path: Path) -> Path:
    """A byte-level BPE with Qwen2's layout: NFC, a Split by Qwen2's regex, a regex-less ByteLevel."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(str(path))
    return path


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_tiktoken_twin_gives_the_same_ids_as_tokenizers(rows, tokenizer_dir, tmp_path, kind):
    texts = _texts_for_twin(rows)
    path = tokenizer_dir if kind == "gpt2" else _qwen_style_tokenizer(texts[:600], tmp_path / "tokenizer.json")
    fast = PackTokenizer(path)
    assert fast.encoder == "tiktoken", fast.twin_reason
    plain = PackTokenizer(path, encoder="tokenizers")
    # Every id of every text, not a sample: the twin is exact on these tokenizers.
    assert fast.twin.encode(texts) == [plain.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    for special in (False, True):
        assert fast.encode_many(texts, add_special_tokens=special) == plain.encode_many(texts, add_special_tokens=special)
    assert fast.encoded["tiktoken"] == 2 * len(texts) and fast.encoded["checked"] > 0 and not fast.encoded["differences"]


def test_pack_output_is_the_same_with_either_encoder_and_names_it(corpus_dir, tokenizer_dir, tmp_path):
    fast = run_pack([corpus_dir], tmp_path / "fast", params(tokenizer_dir, template="chatml"), StageManifest(stage="pack"), LocalEngine(1))
    plain = run_pack([corpus_dir], tmp_path / "plain", params(tokenizer_dir, template="chatml", encoder="tokenizers"), StageManifest(stage="pack"), LocalEngine(1))
    assert [f["sha256"] for f in fast.stats["pack"]["shards"]] == [f["sha256"] for f in plain.stats["pack"]["shards"]]
    assert fast.stats["pack"]["tokenizer"]["encoder"] == "tiktoken" and fast.stats["pack"]["encoder"]["tiktoken"] > 0
    assert plain.stats["pack"]["tokenizer"]["encoder"] == "tokenizers" and "tiktoken" not in plain.stats["pack"]["encoder"]


def test_a_twin_that_differs_is_dropped_and_the_shard_redone(corpus_dir, tokenizer_dir, tmp_path, monkeypatch):
    """A checked text whose ids differ: the twin goes for good, the shard is packed again from
    tokenizers alone, and the manifest counts the difference."""
    from transforms.pack import bpe_twin, stage

    real = bpe_twin.BpeTwin.encode
    monkeypatch.setattr(bpe_twin.BpeTwin, "encode", lambda self, texts: [ids + [0] if i == 3 else ids for i, ids in enumerate(real(self, texts))])
    monkeypatch.setattr(stage, "_tokenizers", {})
    broken = run_pack([corpus_dir], tmp_path / "broken", params(tokenizer_dir), StageManifest(stage="pack"), LocalEngine(1))
    plain = run_pack([corpus_dir], tmp_path / "plain", params(tokenizer_dir, encoder="tokenizers"), StageManifest(stage="pack"), LocalEngine(1))
    assert [f["sha256"] for f in broken.stats["pack"]["shards"]] == [f["sha256"] for f in plain.stats["pack"]["shards"]]
    figures = broken.stats["pack"]
    assert figures["encoder"]["differences"] == 1 and figures["tokenizer"]["encoder"] == "tokenizers"
    assert "differed" in figures["tokenizer"]["encoder_note"]


def test_tokenizers_that_are_not_byte_level_bpe_have_no_twin(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from transforms.pack.bpe_twin import bpe_twin

    texts = ["黄芪补气升阳", "当归补血活血", "the root of astragalus"] * 20
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "</s>"], show_progress=False))
    metaspace = Tokenizer(models.BPE(unk_token="<unk>"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"], show_progress=False))
    for tokenizer, why in ((wordpiece, "not BPE"), (metaspace, "Metaspace")):
        twin, reason = bpe_twin(json.loads(tokenizer.to_str()))
        assert twin is None and why in reason
        tokenizer.save(str(tmp_path / "tokenizer.json"))
        packer = PackTokenizer(tmp_path / "tokenizer.json", eos_token="</s>")
        assert packer.encoder == "tokenizers" and packer.describe()["encoder_note"] == reason
        assert packer.encode_many(["黄芪补气"]) == [tokenizer.encode("黄芪补气", add_special_tokens=False).ids]
