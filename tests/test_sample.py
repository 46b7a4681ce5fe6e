"""Priority sampling against its scheme: the order follows sequential weighted draws without
replacement (checked against a simulation that shares no code with the implementation, and
against exact Plackett-Luce probabilities), is fixed by the seed, repeats each fine-tuning item
`sft_epochs` times; and the shards on disk hold that order."""
from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from schemas import CATEGORIES, CONVERSATIONS, DOCUMENTS, SCHEMAS, conversation_id, document_id
from schemas.dataset import StageManifest, read_manifest
from transforms.sample import shards as shards_module
from transforms.sample.order import Codes, id_hashes, plan_order
from transforms.sample.shards import CORPUS_MANIFEST, write_corpus
from transforms.stages import run_sample
from transforms.sample.tokens import TokenCounter

WEIGHTS = {"web": 32, "literature": 16, "encyclopedia": 8, "books": 4, "sft": 1}
POOL = {"web": 300, "literature": 150, "encyclopedia": 150, "books": 300, "sft": 400}
SFT_EPOCHS = 3


def synthetic_items(pool: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ids = [f"{category}-{i}" for category, n in pool.items() for i in range(n)]
    codes = np.array([CATEGORIES.index(category) for category, n in pool.items() for _ in range(n)], dtype=np.int32)
    return id_hashes(ids), codes, ids


def order_of(hashes, codes, params, sources=None) -> np.ndarray:
    """Category code at each training position."""
    source_codes = np.zeros(len(codes), dtype=np.int32) if sources is None else sources
    plan = plan_order(hashes, codes, source_codes, list(CATEGORIES), ["s0", "s1"], params)
    return plan.category_in_order


def simulate_class_draws(pool: dict[str, int], weights: dict[str, float], epochs: int, runs: int, rng) -> np.ndarray:
    """The scheme itself, independently: at each step draw one remaining item with probability
    proportional to its weight, at the level of class counts. Returns runs x steps category codes."""
    names = list(pool)
    remaining = np.tile([pool[c] * (epochs if c == "sft" else 1) for c in names], (runs, 1)).astype(float)
    w = np.array([weights[c] for c in names], dtype=float)
    steps = int(remaining[0].sum())
    drawn = np.empty((runs, steps), dtype=np.int32)
    code_of = np.array([CATEGORIES.index(name) for name in names])
    for step in range(steps):
        mass = remaining * w
        cumulative = np.cumsum(mass, axis=1)
        pick = (rng.random(runs)[:, None] * cumulative[:, -1:] > cumulative).sum(axis=1)
        drawn[:, step] = code_of[pick]
        remaining[np.arange(runs), pick] -= 1
    return drawn


def sft_share_by_tenth(orders: np.ndarray) -> np.ndarray:
    sft = CATEGORIES.index("sft")
    n = orders.shape[-1]
    edges = np.linspace(0, n, 11).astype(int)
    return np.stack([(orders[..., lo:hi] == sft).mean(axis=-1) for lo, hi in zip(edges[:-1], edges[1:])], axis=-1)


def test_sft_share_per_tenth_matches_sequential_weighted_draws():
    hashes, codes, _ = synthetic_items(POOL)
    params = {"mode": "priority", "weights": WEIGHTS, "sft_epochs": SFT_EPOCHS}
    ours = np.stack([order_of(hashes, codes, {**params, "seed": seed}) for seed in range(30)])
    expected = simulate_class_draws(POOL, WEIGHTS, SFT_EPOCHS, 300, np.random.default_rng(7))
    ours_tenths, expected_tenths = sft_share_by_tenth(ours), sft_share_by_tenth(expected)
    # Domain text first: the sft share rises from about 9% in the first tenth to all of the last.
    overall = POOL["sft"] * SFT_EPOCHS / ours.shape[1]
    assert expected_tenths[:, 0].mean() < overall / 4 and expected_tenths[:, -1].mean() > 0.95
    assert np.all(np.diff(ours_tenths.mean(axis=0)) > 0)
    for tenth in range(10):
        mean, spread = expected_tenths[:, tenth].mean(), expected_tenths[:, tenth].std(ddof=1)
        tolerance = 4 * np.sqrt(spread**2 / len(ours) + spread**2 / len(expected)) + 1e-3
        assert abs(ours_tenths[:, tenth].mean() - mean) < tolerance, (tenth, ours_tenths[:, tenth].mean(), mean, tolerance)
        # And each seed alone is a plausible draw of the scheme.
        assert np.all(np.abs(ours_tenths[:, tenth] - mean) < 6 * spread + 0.01), tenth


def test_small_permutations_follow_exact_plackett_luce_probabilities():
    weights = {"web": 1.0, "literature": 2.0, "encyclopedia": 4.0, "books": 4.0, "sft": 1.0}
    codes = np.array([0, 1, 2], dtype=np.int32)  # one web (w 1), one literature (w 2), one encyclopedia (w 4)
    hashes = id_hashes(["a", "b", "c"])
    seen = Counter()
    runs = 3000
    for seed in range(runs):
        plan = plan_order(hashes, codes, np.zeros(3, dtype=np.int32), list(CATEGORIES), ["s"], {"weights": weights, "seed": seed})
        seen[tuple(plan.category_in_order)] += 1
    w = [1.0, 2.0, 4.0]
    permutations = list(itertools.permutations(range(3)))
    exact = [w[a] / 7.0 * w[b] / (7.0 - w[a]) for a, b, _ in permutations]
    observed = [seen[p] for p in permutations]
    assert sum(observed) == runs
    result = stats.chisquare(observed, [p * runs for p in exact])
    assert result.pvalue > 1e-3, (observed, exact)


def test_uniform_and_sequential_modes():
    hashes, codes, _ = synthetic_items(POOL)
    sft = CATEGORIES.index("sft")
    uniform = order_of(hashes, codes, {"mode": "uniform", "weights": WEIGHTS, "sft_epochs": SFT_EPOCHS, "seed": 1})
    share = (uniform == sft).mean()
    tenth = len(uniform) // 10
    # A uniform shuffle: each tenth holds sft at its overall share (hypergeometric spread).
    spread = np.sqrt(share * (1 - share) / tenth)
    for part in (uniform[:tenth], uniform[-tenth:]):
        assert abs((part == sft).mean() - share) < 5 * spread
    sequential = order_of(hashes, codes, {"mode": "sequential", "weights": WEIGHTS, "sft_epochs": SFT_EPOCHS, "seed": 1})
    first_sft = int(np.argmax(sequential == sft))
    assert first_sft == len(sequential) - POOL["sft"] * SFT_EPOCHS
    assert np.all(sequential[first_sft:] == sft) and np.all(sequential[:first_sft] != sft)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        order_of(hashes, codes, {"mode": "shuffle", "weights": WEIGHTS})


def test_a_source_weight_overrides_its_category():
    hashes, codes, _ = synthetic_items({"books": 400})
    sources = np.array([0, 1] * 200, dtype=np.int32)
    params = {"weights": WEIGHTS, "source_weights": {"s1": 400.0}, "seed": 3}
    plan = plan_order(hashes, codes, sources, list(CATEGORIES), ["s0", "s1"], params)
    # Weight 400 against 4: nearly all of s1 is drawn before s0 starts in earnest.
    assert plan.position[sources == 1].mean() < 0.6 * plan.position[sources == 0].mean()
    assert np.median(plan.position[sources == 1]) < 200 < np.median(plan.position[sources == 0])


def test_a_category_without_weight_is_refused():
    hashes, codes, _ = synthetic_items({"web": 3})
    with pytest.raises(ValueError, match="category 'web' has no sampling weight"):
        plan_order(hashes, codes, np.zeros(3, dtype=np.int32), list(CATEGORIES), ["s"], {"weights": {"sft": 1}})


# -- the stage on disk -------------------------------------------------------------------------


def write_items(folder: Path, documents: list[dict], conversations: list[dict], files: int = 1) -> Path:
    for kind, rows in ((DOCUMENTS, documents), (CONVERSATIONS, conversations)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[kind]])
        for part in range(files):
            chunk = rows[part::files]
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), folder / kind / f"part-{part:05d}.parquet")
    return folder


def corpus_inputs(rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    herbs = ["人参", "黄芪", "当归", "白术", "甘草", "茯苓", "川芎", "熟地"]
    documents = []
    for i in range(240):
        category = ["web", "books", "encyclopedia", "literature"][i % 4]
        text = f"{herbs[i % 8]}，味甘性温，第{i}条。" * int(rng.integers(1, 5))
        documents.append({"id": document_id(category, text), "text": text, "source": f"{category}-src", "category": category, "meta": json.dumps({"n": i})})
    conversations = []
    for i in range(60):
        messages = [{"role": "user", "content": f"{herbs[i % 8]}有什么功效？（{i}）"}, {"role": "assistant", "content": f"{herbs[i % 8]}补气。"}]
        conversations.append({"id": conversation_id("qa", messages), "messages": messages, "source": "qa", "category": "sft", "origin_id": f"rec-{i}"})
    return documents, conversations


def test_shards_hold_the_planned_order_and_read_as_one_dataset(tmp_path, monkeypatch):
    documents, conversations = corpus_inputs(np.random.default_rng(0))
    params = {"mode": "priority", "weights": WEIGHTS, "sft_epochs": SFT_EPOCHS, "seed": 5, "shard_rows": 37, "row_group_rows": 10}
    # Small spill buffers, so that rows reach each shard over many flushes.
    monkeypatch.setattr(shards_module, "SPILL_ROWS", 50)
    first = run_sample([write_items(tmp_path / "a", documents, conversations)], tmp_path / "corpus-a", params, StageManifest(stage="sample"), "cfg")
    shuffled = list(np.random.default_rng(1).permutation(len(documents)))
    second_inputs = write_items(tmp_path / "b", [documents[i] for i in shuffled], conversations[::-1], files=3)
    run_sample([second_inputs], tmp_path / "corpus-b", params, StageManifest(stage="sample"), "cfg")
    run_sample([second_inputs], tmp_path / "corpus-c", {**params, "seed": 6}, StageManifest(stage="sample"), "cfg")

    corpus = tmp_path / "corpus-a"
    manifest = json.loads((corpus / CORPUS_MANIFEST).read_text(encoding="utf-8"))
    total = len(documents) + len(conversations) * SFT_EPOCHS
    assert manifest["rows"] == total and manifest["items"] == len(documents) + len(conversations)
    assert first.rows_in == {DOCUMENTS: 240, CONVERSATIONS: 60} and first.rows_out == {"corpus": total}
    assert read_manifest(corpus).stats["shards"] == len(manifest["shards"]) == -(-total // 37)

    # The folder reads as one dataset: the manifests beside the shards are skipped by discovery.
    table = pq.read_table(corpus)
    assert table.num_rows == total
    table = table.sort_by("position")
    assert table.column("position").to_pylist() == list(range(total))
    for entry in manifest["shards"]:
        path = corpus / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        metadata = pq.ParquetFile(path).metadata
        assert metadata.num_rows == entry["rows"] and metadata.num_row_groups == -(-entry["rows"] // 10)
        positions = pq.read_table(path, columns=["position"]).column("position").to_pylist()
        assert positions == list(range(entry["first_position"], entry["first_position"] + entry["rows"]))

    # Same seed, inputs in another order and other files: the same order. Another seed: another.
    ids = table.column("id").to_pylist()
    assert pq.read_table(tmp_path / "corpus-b").sort_by("position").column("id").to_pylist() == ids
    assert pq.read_table(tmp_path / "corpus-c").sort_by("position").column("id").to_pylist() != ids

    # Each fine-tuning item exactly sft_epochs times, as <id>@0..2 with its origin in meta.
    frame = table.to_pandas()
    sft = frame[frame["category"] == "sft"]
    base = sft["id"].str.rsplit("@", n=1).str[0]
    assert set(base.value_counts()) == {SFT_EPOCHS} and base.nunique() == len(conversations)
    assert sorted(sft["id"].str.rsplit("@", n=1).str[1].astype(int).value_counts().index) == [0, 1, 2]
    assert set(sft["meta"].map(lambda m: json.loads(m)["origin_id"])) == {f"rec-{i}" for i in range(60)}
    assert frame["id"].is_unique
    assert frame[frame["category"] != "sft"]["meta"].map(lambda m: "n" in json.loads(m)).all()

    # Counts per category and source, tokens per shard, and a curve bucket per 1% of positions.
    assert manifest["counts"]["category"] == dict(Counter(frame["category"]))
    assert manifest["counts"]["source"] == dict(Counter(frame["source"]))
    assert manifest["counts"]["format"] == {"chat": 180, "text": 240}
    assert manifest["tokens"]["total"] == sum(s["tokens"] for s in manifest["shards"]) > 0
    assert len(manifest["sampling_curve"]) == 100
    assert all(abs(sum(bucket.values()) - 1) < 1e-3 for bucket in manifest["sampling_curve"])
    assert manifest["schema_version"] and manifest["config_hash"] == "cfg"


def test_token_counts_estimated_from_characters_or_counted_by_a_tokenizer(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from transforms.sample import tokens

    rows = pa.table(
        {
            "text": ["人参补气 ok", None],
            "messages": pa.array([None, [{"role": "user", "content": "黄芪?"}, {"role": "assistant", "content": "补气 and more"}]], SCHEMAS[CONVERSATIONS].field("messages").type),
        }
    )
    estimate = TokenCounter(tokens_per_cjk_char=1.0, chars_per_token=4.0).row_tokens(rows)
    # 4 Han + "ok" (2 / 4); 2 Han + "?" (1 / 4), 2 Han + "andmore" (7 / 4).
    assert estimate.tolist() == pytest.approx([4.5, 4 + 8 / 4])
    # Full-width punctuation counts as a wide character; tabs and newlines count nothing.
    sliced = pa.table({"text": pa.array(["x", "人参，\t补气\n", None]).slice(1), "messages": pa.nulls(2, rows.schema.field("messages").type)})
    assert TokenCounter().row_tokens(sliced).tolist() == [5.0, 0.0]
    # Bytes are judged a chunk of rows at a time; any chunk size gives the same counts.
    many = pa.table({"text": pa.array(["人参 ok", "", None, "x" * 40, "黄芪，补气。"] * 5), "messages": pa.nulls(25, rows.schema.field("messages").type)})
    whole = TokenCounter().row_tokens(many).tolist()
    monkeypatch.setattr(tokens, "CHUNK_BYTES", 7)
    assert TokenCounter().row_tokens(many).tolist() == whole

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(["人参补气 ok", "黄芪 ? 补气 and more"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    counted = TokenCounter(path).row_tokens(rows)
    expected = [len(tokenizer.encode("人参补气 ok").ids), len(tokenizer.encode("黄芪?").ids) + len(tokenizer.encode("补气 and more").ids)]
    assert counted.tolist() == expected
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        TokenCounter(tmp_path / "missing.json")


def test_codes_keep_first_sight_order():
    codes = Codes(("web",))
    assert codes.encode(pa.array(["books", "web", "books"])).tolist() == [1, 0, 1]
    assert codes.names == ["web", "books"]


def test_id_hashes_are_fnv1a_of_the_utf8_bytes_then_splitmix64():
    def splitmix64(x: int) -> int:
        mask = (1 << 64) - 1
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    def reference(text: str) -> int:
        h = 0xCBF29CE484222325
        for byte in text.encode("utf-8"):
            h = ((h ^ byte) * 0x100000001B3) & ((1 << 64) - 1)
        return splitmix64(h)

    ids = ["", "a", "人参", "3f2a9c@2", "x" * 70, "b", "黄芪" * 9]
    assert id_hashes(ids).tolist() == [reference(i) for i in ids]
    # An Arrow slice (an offset into shared buffers) and a chunked column give the same hashes.
    assert id_hashes(pa.array(ids).slice(2, 3)).tolist() == [reference(i) for i in ids[2:5]]
    assert id_hashes(pa.chunked_array([ids[:3], ids[3:]])).tolist() == [reference(i) for i in ids]
