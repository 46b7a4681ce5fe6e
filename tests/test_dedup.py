"""Deduplication: the MinHash core, near-duplicate clusters, repeated paragraphs, the persistent
index, and precision/recall against exact Jaccard on real book text."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.dataset import DatasetWriter, StageManifest, read_kind
from schemas.records import CLUSTERS, REPEATED_PARAGRAPHS
from transforms.dedup import minhash
from transforms import stages
from transforms.clean.normalize import match_key
from transforms.dedup.clusters import ShingleSets, UnionFind, components, pair_jaccard
from transforms.dedup.index import IndexMismatch
from transforms.dedup.keys import exact_key
from transforms.dedup.spill import ShingleSpill
from transforms.engines.local import LocalEngine

from benchmarks.dedup_eval import build_collection, evaluate, exact_jaccard_pairs, load_passages, plant_copy


@pytest.fixture(scope="module")
def passages(shared_data):
    return load_passages(shared_data / "corpus" / "ancient-books", 400)


def test_params_from_threshold_match_datasketch():
    from datasketch import MinHashLSH

    params = minhash.MinHashParams.from_threshold(0.8)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    assert (params.bands, params.rows) == (lsh.b, lsh.r)
    recall_first = minhash.MinHashParams.from_threshold(0.8, false_negative_weight=0.9)
    assert recall_first.candidate_probability(0.8) > params.candidate_probability(0.8)
    with pytest.raises(ValueError, match="threshold"):
        minhash.MinHashParams.from_threshold(1.0)


def test_bands_and_rows_are_datasketchs_choice_without_datasketch():
    """`_band_errors` (Gauss-Legendre) gives datasketch's weighted errors to rounding, and the
    choice equals `datasketch.lsh._optimal_param` over thresholds, weights and sizes, near ties
    (decided by datasketch itself) included."""
    from datasketch.lsh import _false_negative_probability, _false_positive_probability, _optimal_param

    pairs, errors = minhash._band_errors(0.8, 128, 0.9)
    integrated = [0.1 * _false_positive_probability(0.8, b, r) + 0.9 * _false_negative_probability(0.8, b, r) for b, r in pairs]
    assert np.abs(errors - np.array(integrated)).max() < 1e-10
    configs = [(t / 10, n, w) for t in range(1, 10) for n in (32, 128) for w in (0.1, 0.5, 0.9)]
    configs += [(0.85, 32, 0.9), (0.9, 128, 0.5)]  # near ties: another choice within the margin
    near = 0
    for threshold, num_perm, weight in configs:
        _, errors = minhash._band_errors(threshold, num_perm, weight)
        ordered = np.sort(errors)
        near += ordered[1] - ordered[0] <= minhash._BAND_ERROR_MARGIN
        chosen = minhash._optimal_bands.__wrapped__(threshold, num_perm, weight)
        assert chosen == _optimal_param(threshold, num_perm, 1.0 - weight, weight), (threshold, num_perm, weight)
    assert near >= 2


def test_signatures_are_the_same_in_another_process(passages):
    params = minhash.MinHashParams.from_threshold(0.8)
    here = minhash.signatures(passages[:20], params)
    code = (
        "import sys, json, hashlib; sys.path.insert(0, '.');"
        "from transforms.dedup import minhash;"
        "texts = json.load(sys.stdin);"
        "sig = minhash.signatures(texts, minhash.MinHashParams.from_threshold(0.8));"
        "print(hashlib.sha256(sig.tobytes()).hexdigest())"
    )
    import hashlib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    other = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(passages[:20]), capture_output=True, text=True, cwd=repo,
        env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True,
    )
    assert other.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()
    assert here.dtype == np.uint32 and here.shape == (20, 128)


def test_signature_estimates_jaccard_as_well_as_datasketch(passages):
    """One-permutation hashing with densification against datasketch's 128 permutations, on
    pairs of real passages edited at several rates: the error to the exact Jaccard is no worse."""
    from datasketch import MinHash

    rng = random.Random(3)
    alphabet = "".join(sorted(set("".join(passages))))
    params = minhash.MinHashParams.from_threshold(0.8)
    ours, theirs = [], []
    for number, text in enumerate(passages[:150]):
        copy = plant_copy(text, (0.01, 0.03, 0.06, 0.12, 0.25)[number % 5], rng, alphabet)
        a, b = minhash.shingle_hashes(text, 5), minhash.shingle_hashes(copy, 5)
        exact = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
        sig = minhash.signatures([text, copy], params)
        ours.append(minhash.estimated_jaccard(sig[0], sig[1]) - exact)
        reference = [MinHash(num_perm=128, seed=number), MinHash(num_perm=128, seed=number)]
        for sketch, hashes in zip(reference, (a, b)):
            sketch.update_batch([int(h).to_bytes(8, "little") for h in hashes])
        theirs.append(reference[0].jaccard(reference[1]) - exact)
    rmse_ours, rmse_theirs = np.sqrt(np.mean(np.square(ours))), np.sqrt(np.mean(np.square(theirs)))
    assert abs(np.mean(ours)) < 0.01, "unbiased"
    assert rmse_ours <= 1.15 * rmse_theirs, (rmse_ours, rmse_theirs)


def test_short_and_empty_texts():
    params = minhash.MinHashParams.from_threshold(0.8)
    sig = minhash.signatures(["", "黄芪", "黄芪", "，。"], params)
    assert (sig[0] == 0xFFFFFFFF).all() and (sig[3] == 0xFFFFFFFF).all()
    assert minhash.estimated_jaccard(sig[1], sig[2]) == 1.0
    assert len(minhash.shingle_hashes("黄芪", 5)) == 1
    # Traditional script, punctuation and spacing do not change the shingles.
    assert np.array_equal(minhash.shingle_hashes("黃芪補氣，升陽固表。", 5), minhash.shingle_hashes("黄芪补气 升阳固表", 5))


def test_union_find_and_candidate_pairs():
    sets = UnionFind(6)
    for a, b in ((0, 1), (2, 3), (1, 3)):
        sets.union(a, b)
    roots = sets.roots()
    assert len({roots[0], roots[1], roots[2], roots[3]}) == 1 and roots[4] != roots[5]
    keys = np.array([[1, 7], [2, 7], [1, 8], [3, 9]], dtype=np.uint64)
    first, other = minhash.candidate_pairs(keys)
    assert sorted(zip(first.tolist(), other.tolist())) == [(0, 1), (0, 2)]


def test_near_duplicates_on_real_books_reach_precision_and_recall(shared_data):
    """Planted near-copies at known edit rates, most near the threshold, scored against the exact
    Jaccard of the same shingles over all pairs (real books copy each other too): candidates
    verified on the exact shingle sets lose no true pair to the estimator's noise."""
    result = evaluate(shared_data / "corpus" / "ancient-books", passages=400)
    ours = result["systems"]["tcm-corpus (exact Jaccard verification)"]
    assert ours["planted_true_pairs"] >= 150
    assert ours["recall"] >= 0.95, ours
    assert ours["distinct_removed_share"] <= 0.02, ours
    before = result["systems"]["tcm-corpus (estimated Jaccard verification, before)"]
    assert ours["caught"] > before["caught"], (ours, before)
    lightly_edited = result["per_rate"][0.005]
    assert lightly_edited["caught"] == lightly_edited["copies"]
    assert result["per_rate"][0.12]["above_threshold"] == 0


def _dataset(folder, rows, kind="documents"):
    manifest = StageManifest(stage="test")
    with DatasetWriter(folder, manifest) as writer:
        writer.write(kind, pa.Table.from_pylist(rows))
        writer.commit()
    return folder


def _doc(doc_id, text, source="site", **extra):
    return {"id": doc_id, "text": text, "source": source, "category": "web", **extra}


FOOTER = "本站内容仅供参考，不能代替执业医师的诊断和治疗"
NAVIGATION = "首页 中药大全 方剂大全 穴位图解 养生之道"


def test_dedup_stage_clusters_boilerplate_and_policy(tmp_path, passages):
    base, other = passages[0], passages[1]
    rng = random.Random(5)
    alphabet = "".join(sorted(set(base)))
    near = plant_copy(base, 0.005, rng, alphabet)
    assert near != base
    # a web source whose pages share navigation and footer lines
    pages = [_doc(f"page-{i}", f"{NAVIGATION}\n{p}\n{FOOTER}") for i, p in enumerate(passages[10:16])]
    # a reference work: a line shared by its entries is content, not boilerplate
    monographs = [
        {**_doc(f"herb-{i}", f"{p[:200]}\n【用法与用量】9～15g。", source="pharmacopoeia"), "category": "encyclopedia"}
        for i, p in enumerate(passages[30:37])
    ]
    rows = [
        _doc("a", base, quality_score=0.2),
        _doc("b", near, quality_score=0.9),  # better quality: kept over `a`
        _doc("c", base.replace("。", "，"), source="books", quality_score=None),  # exact duplicate of a
        _doc("d", other),
        _doc("e", f"{NAVIGATION}\n{FOOTER}"),  # nothing but boilerplate
        *pages,
        *monographs,
    ]
    engine = LocalEngine(workers=1, batch_rows=4)
    params = {"keep": ["quality", "longest", "source"], "quality_column": "quality_score", "paragraphs": {"min_documents": 5, "min_share": 0.5}}
    manifest = stages.run_dedup([_dataset(tmp_path / "in", rows)], tmp_path / "out", params, StageManifest(stage="dedup"), engine)
    assert manifest.rows_in["documents"] == len(rows) == manifest.rows_kept["documents"] + manifest.rows_rejected["documents"]
    rejected = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "out" / "rejected" / "documents").to_pylist()}
    assert rejected == {"a": "near_duplicate_of:b", "c": "near_duplicate_of:b", "e": "repeated_paragraphs_only"}
    kept = {r["id"]: r["text"] for r in read_kind(tmp_path / "out", "documents").to_pylist()}
    assert set(kept) == {"b", "d", *(f"page-{i}" for i in range(6)), *(f"herb-{i}" for i in range(7))}
    assert all(kept[f"herb-{i}"].endswith("【用法与用量】9～15g。") for i in range(7))
    assert all(FOOTER not in text and NAVIGATION not in text for text in kept.values())
    assert kept["page-0"] == passages[10]
    clusters = read_kind(tmp_path / "out", CLUSTERS).to_pylist()
    by_id = {r["id"]: r for r in clusters}
    assert set(by_id) == {"a", "b", "c"} and {r["cluster"] for r in clusters} == {"b"}
    assert by_id["b"]["kept"] and by_id["b"]["similarity"] == 1.0
    assert not by_id["a"]["kept"] and 0.8 <= by_id["a"]["similarity"] < 1.0 and by_id["a"]["match"] == "near"
    audit = read_kind(tmp_path / "out", REPEATED_PARAGRAPHS).to_pylist()
    assert {r["paragraph"] for r in audit} == {FOOTER, NAVIGATION}
    assert all(r["documents"] == 7 and r["removed"] == 7 and r["source"] == "site" for r in audit)
    stats = manifest.stats["dedup"]["documents"]
    assert stats["near_duplicates"] == 2 and stats["repeated_paragraphs"]["occurrences_removed"] == 14
    # exact only: the near copy stays, the punctuation-only variant goes, the first row wins
    exact = stages.run_dedup(
        [tmp_path / "in"], tmp_path / "exact", {"method": "exact", "keep": "first", "paragraphs": {"enabled": False}},
        StageManifest(stage="dedup"), engine,
    )
    rejected = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "exact" / "rejected" / "documents").to_pylist()}
    assert rejected == {"c": "exact_duplicate_of:a"} and exact.rows_kept["documents"] == len(rows) - 1


def test_source_priority_breaks_ties(tmp_path, passages):
    rows = [_doc("x", passages[3], source="web-copy"), _doc("y", passages[3], source="canon")]
    params = {"keep": ["source"], "source_priority": ["canon"], "paragraphs": {"enabled": False}}
    stages.run_dedup([_dataset(tmp_path / "in", rows)], tmp_path / "out", params, StageManifest(stage="dedup"), LocalEngine())
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "documents").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejected] == [("x", "exact_duplicate_of:y")]


def test_index_deduplicates_a_new_crawl_against_the_corpus_before(tmp_path, passages):
    engine = LocalEngine(workers=1, batch_rows=8)
    params = {"index_path": str(tmp_path / "index"), "paragraphs": {"enabled": False}}
    first = _dataset(tmp_path / "crawl1", [_doc(f"old-{i}", p) for i, p in enumerate(passages[20:30])])
    stages.run_dedup([first], tmp_path / "out1", params, StageManifest(stage="dedup"), engine)
    segments = sorted((tmp_path / "index" / "documents").glob("segment-*.parquet"))
    assert len(segments) == 1 and pq.read_metadata(segments[0]).num_rows == 10

    copy = passages[22][:200] + "按" + passages[22][200:]  # one character inserted
    second = _dataset(tmp_path / "crawl2", [_doc("new-0", copy), _doc("new-1", passages[40]), _doc("new-2", passages[25])])
    manifest = stages.run_dedup([second], tmp_path / "out2", params, StageManifest(stage="dedup"), engine)
    rejected = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "out2" / "rejected" / "documents").to_pylist()}
    assert rejected == {"new-0": "near_duplicate_of:old-2", "new-2": "exact_duplicate_of:old-5"}
    assert manifest.stats["dedup"]["documents"]["prior_rows"] == 10
    clusters = read_kind(tmp_path / "out2", CLUSTERS).to_pylist()
    assert {(r["id"], r["prior"], r["kept"]) for r in clusters if r["cluster"] == "old-2"} == {("old-2", True, True), ("new-0", False, False)}
    assert len(list((tmp_path / "index" / "documents").glob("segment-*.parquet"))) == 2

    # the same crawl again is compared with the others, not with its own earlier segment
    again = stages.run_dedup([first], tmp_path / "out3", params, StageManifest(stage="dedup"), engine)
    assert again.rows_rejected["documents"] == 0
    assert len(list((tmp_path / "index" / "documents").glob("segment-*.parquet"))) == 2

    with pytest.raises(IndexMismatch, match="ngram"):
        stages.run_dedup([second], tmp_path / "out4", {**params, "ngram": 7}, StageManifest(stage="dedup"), engine)


def test_exact_jaccard_pairs_helper_matches_a_direct_count(passages):
    texts, _ = build_collection(passages[:30])
    pairs = exact_jaccard_pairs(texts, 5, 0.5)
    for (i, j), similarity in list(pairs.items())[:5]:
        a, b = set(minhash.shingle_hashes(texts[i], 5)), set(minhash.shingle_hashes(texts[j], 5))
        assert similarity == pytest.approx(len(a & b) / len(a | b))


def test_candidate_pairs_and_components_match_a_direct_count():
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 40, size=(300, 5)).astype(np.uint64)  # many shared buckets
    expected = set()
    for band in range(keys.shape[1]):
        heads = {}
        for row, key in enumerate(keys[:, band].tolist()):
            heads.setdefault(key, row)
            if heads[key] != row:
                expected.add((heads[key], row))
    first, other = minhash.candidate_pairs(np.ascontiguousarray(keys.T).T)  # band-major, as the stage holds them
    assert list(zip(first.tolist(), other.tolist())) == sorted(expected)
    edges = rng.integers(0, 500, size=(200, 2))
    sets = UnionFind(500)
    for a, b in edges.tolist():
        sets.union(a, b)
    labels = components(500, edges[:, 0], edges[:, 1])
    roots = sets.roots()
    assert len(set(zip(labels.tolist(), roots.tolist()))) == len(set(roots.tolist())) == len(set(labels.tolist()))


def test_flat_shingle_sets_spill_and_pair_jaccard_agree_with_the_direct_count(tmp_path, passages):
    rng = random.Random(8)
    alphabet = "".join(sorted(set("".join(passages))))
    texts = passages[:30] + [plant_copy(p, 0.05, rng, alphabet) for p in passages[:30]] + ["", "黄芪", "，。"]
    keys = [match_key(t) for t in texts]
    sets = minhash.shingle_sets_of_keys(keys, 5)
    values, counts = minhash.shingle_values_of_keys(keys, 5)
    assert counts.tolist() == [len(s) for s in sets] and np.array_equal(values, np.concatenate(sets))
    spill = ShingleSpill(tmp_path / "shingles.u32", len(keys))
    half = int(counts[:40].sum())
    spill.append(values[:half], counts[:40])
    spill.append(values[half:], counts[40:])
    rows = np.array([0, 5, 30, 35, 60, 61, 62])
    read = spill.read(rows)
    spill.close()
    assert all(np.array_equal(read.values[read.offsets[i] : read.offsets[i + 1]], sets[r]) for i, r in enumerate(rows))
    whole = ShingleSets.of_counts(values, counts)
    left = np.array([0, 1, 2, 30, 60, 60, 61, 0, 62])
    right = np.array([30, 31, 32, 0, 60, 61, 61, 1, 61])
    assert pair_jaccard(whole, left, right, chunk_values=300).tolist() == [minhash.exact_jaccard(sets[a], sets[b]) for a, b in zip(left, right)]


def _ends_in_zero_byte(prefix: str) -> str:
    """A text whose exact key (16-byte digest) ends in a zero byte."""
    for i in range(100_000):
        text = f"{prefix}{i}"
        if exact_key(match_key(text))[-1] == 0:
            return text
    raise AssertionError("no key ending in a zero byte")


def test_index_keeps_keys_that_end_in_a_zero_byte(tmp_path, passages):
    text = _ends_in_zero_byte(passages[5][:60])
    engine = LocalEngine(workers=1, batch_rows=8)
    params = {"index_path": str(tmp_path / "index"), "paragraphs": {"enabled": False}}
    first = _dataset(tmp_path / "crawl1", [_doc("zero", text), _doc("other", passages[6])])
    stages.run_dedup([first], tmp_path / "out1", params, StageManifest(stage="dedup"), engine)
    assert not [p for p in (tmp_path / "out1").iterdir() if p.name.startswith("dedup-")], "the spill folder is removed"
    segment = pq.read_table(next((tmp_path / "index" / "documents").glob("segment-*.parquet")))
    assert segment.column("key").to_pylist()[0] == exact_key(match_key(text))
    second = _dataset(tmp_path / "crawl2", [_doc("again", text + "。")])
    manifest = stages.run_dedup([second], tmp_path / "out2", params, StageManifest(stage="dedup"), engine)
    rejected = pq.read_table(tmp_path / "out2" / "rejected" / "documents").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejected] == [("again", "exact_duplicate_of:zero")]
    assert manifest.stats["dedup"]["documents"]["prior_rows"] == 2


def test_batch_line_hashes_equal_the_per_text_line_hashes(passages):
    """Repeated paragraphs hash a batch's lines with one match_keys call: the same hash (or None
    for a line too short) for every line as line_hashes gives text by text."""
    from transforms.dedup import paragraphs

    texts = ["\n".join(p[i : i + 37] for i in range(0, len(p), 37)) for p in passages[:200]]
    texts += ["", "\n\n", "  \n\x1c\n短行\n", "ＡＢＣ１２３，（注）…\n乾隆年間，頭髮發現了\ne\u0301 a\u0308 ΟΔΟΣ ΣΑΣ İIı 𠀀本草綱目拾遺"]
    assert paragraphs.batch_line_hashes(texts, 8) == [paragraphs.line_hashes(text, 8) for text in texts]
    assert any(h is None for hashes in paragraphs.batch_line_hashes(texts, 8) for h in hashes)
