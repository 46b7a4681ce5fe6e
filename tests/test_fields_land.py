"""Nothing a source says is set aside unseen: through the ingest stage, every non-empty string of
every record of every importer lands in a message, in the text, or in a meta key that the ingest
manifest lists as not trained (stats.untrained_meta, with counts). Run over every shared
instruction set, the pharmacopoeia, both terminology standards, a few books and every
evaluation set."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import CONVERSATIONS, DOCUMENTS, loads_meta
from schemas.dataset import StageManifest, read_manifest
from transforms import stages
from transforms.ingest.importers import FORMATS
from transforms.ingest.importers.benchmarks import MARKUP, _rows as benchmark_rows
from transforms.ingest.importers.books import CONTENT_PREFIX, strip_markers
from transforms.ingest.importers.instructions import SPEAKER, read_records
from transforms.ingest.importers.monographs import MISSING
from transforms.clean.normalize import match_key

SPACING = re.compile(r"\s+")


def compact(text: str) -> str:
    return SPACING.sub("", text)


def strings(value, path: str = ""):
    """(path, string) for every non-empty string inside a record (numbers as written)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{path}[{i}]")
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
        yield path, str(value)


def pieces(text: str) -> list[str]:
    """A field's lines, speaker labels (医生：/患者：) removed: what must be found somewhere."""
    # SPEAKER.split gives [text, speaker, text, speaker, ...]: the texts are the even items.
    return [compact(p) for line in text.splitlines() for p in SPEAKER.split(line)[::2] if compact(p)]


def field_of(path: str) -> str:
    return re.split(r"[.\[]", path)[0]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, shared_data):
    """One ingest of a source per importer and shared file: (workdir, manifest, sources)."""
    books = sorted((shared_data / "corpus" / "ancient-books").glob("*.txt"))[:3]
    pharmacopoeia = shared_data / "corpus" / "pharmacopoeia"
    sources = [{"name": f"instructions-{p.stem}", "format": "instructions", "path": str(p), "category": "sft"}
               for p in sorted((shared_data / "instructions").iterdir())]
    sources += [{"name": f"benchmark-{p.stem}", "format": "benchmark", "path": str(p), "category": "encyclopedia"}
                for p in sorted((shared_data / "benchmarks").iterdir())]
    sources += [
        {"name": "monographs", "format": "monograph", "path": str(pharmacopoeia / "2022年中药药典.txt"), "category": "encyclopedia"},
        {"name": "terms-diseases", "format": "terms", "path": str(pharmacopoeia / "中医临床诊疗术语疾病.txt"), "category": "encyclopedia"},
        {"name": "terms-syndromes", "format": "terms", "path": str(pharmacopoeia / "中医临床诊疗术语证候.txt"), "category": "encyclopedia"},
    ]
    sources += [{"name": f"book-{p.stem}", "format": "book", "path": str(p), "category": "books"} for p in books]
    assert {s["format"] for s in sources} >= set(FORMATS) - {"text"}
    output = tmp_path_factory.mktemp("fields") / "ingest"
    stages.run_ingest(sources, [], output, {}, StageManifest(stage="ingest"))
    return output, read_manifest(output), sources


def rows_of(output: Path, kind: str, source: str) -> list[dict]:
    return [r for r in pq.read_table(output / kind).to_pylist() if r["source"] == source]


def rejected_rows(output: Path, source: str) -> list[dict]:
    """Documents rejected at import (a record repeated, an empty entry): kept with a reason."""
    folder = output / "rejected" / DOCUMENTS
    return [r for r in pq.read_table(folder).to_pylist() if r["source"] == source] if folder.exists() else []


def rejected_origins(output: Path, source: str) -> set:
    folder = output / "rejected" / CONVERSATIONS
    if not folder.exists():
        return set()
    return {r["origin_id"] for r in pq.read_table(folder).to_pylist() if r["source"] == source}


def test_every_field_of_every_instruction_record_lands(ingested):
    output, manifest, sources = ingested
    landed: dict[str, Counter] = {}
    for source in (s for s in sources if s["format"] == "instructions"):
        path, name = Path(source["path"]), source["name"]
        untrained = manifest.stats["untrained_meta"].get(name, {})
        rows = {r["origin_id"]: r for r in rows_of(output, CONVERSATIONS, name)}
        repeated = rejected_origins(output, name)
        counts = landed.setdefault(path.name, Counter())
        for index, record, _ in read_records(path):
            origin = str(record["id"]) if str(record.get("id", "")).strip() else f"{path.name}:{index}"
            if origin not in rows:
                assert origin in repeated, f"{path.name} record {index} is neither kept nor rejected"
                continue
            row = rows[origin]
            said = compact("\n".join(m["content"] for m in row["messages"]))
            meta = loads_meta(row["meta"])
            for field_path, value in strings(record):
                field = field_of(field_path)
                if field == "id" and str(value) == row["origin_id"]:
                    counts["id -> origin_id"] += 1
                elif all(piece in said for piece in pieces(value)):
                    counts[f"{field} -> messages"] += 1
                else:
                    assert field in untrained and compact(value) in compact(json.dumps(meta.get(field), ensure_ascii=False)), (
                        f"{path.name} record {index}: {field_path} = {value[:60]!r} is in no message and "
                        "in no meta key the manifest lists as not trained")
                    counts[f"{field} -> meta (not trained)"] += 1
    print(json.dumps(landed, ensure_ascii=False, indent=1))
    mtcmb = landed["mtcmb_tcm_chgd.jsonl"]
    # The expert's conclusion and the doctor's opening are training data now, for all 100.
    assert mtcmb["answer -> messages"] == 100 and mtcmb["dialogue -> messages"] == 100
    assert mtcmb["source -> meta (not trained)"] == 100
    assert manifest.stats["untrained_meta"]["instructions-mtcmb_tcm_chgd"] == {"source": 100}
    assert landed["cmtmedqa_test.json"]["history -> messages"] > 5000


def test_every_line_of_the_reference_texts_lands(ingested):
    """Monographs, terminology and books: every non-empty line of the file is in a text or in
    an untrained meta key (header lines, chapter titles, the standard's codes, a wrong heading)."""
    output, manifest, sources = ingested
    for source in (s for s in sources if s["format"] in ("monograph", "terms", "book")):
        name, path = source["name"], Path(source["path"])
        untrained = set(manifest.stats["untrained_meta"].get(name, {}))
        rows = rows_of(output, DOCUMENTS, name) + rejected_rows(output, name)
        texts = match_key("\n".join(r["text"] for r in rows))
        aside = match_key(" ".join(json.dumps(loads_meta(r["meta"]).get(k), ensure_ascii=False)
                                   for r in rows for k in untrained))
        lines = path.read_bytes().decode("gb18030" if source["format"] == "book" else "utf-8", errors="replace").splitlines()
        missing = []
        for line in lines:
            piece = compact(line.removeprefix(MISSING).removeprefix("注："))
            if source["format"] == "book":
                piece = compact(CONTENT_PREFIX.sub("", strip_markers(line.strip()), count=1))
                piece = re.sub(r"^<(?:篇名|目录)>|^(?:书名|作者|朝代|年份)：", "", piece).replace("\\", "")
            piece = match_key(piece)  # punctuation aside: 「正盛邪实证泛指」 is 「正盛邪实证：泛指」
            if piece and piece not in texts and piece not in aside:
                missing.append(line)
        assert not missing, f"{name}: {len(missing)} lines land nowhere, e.g. {missing[:3]}"


def test_every_field_of_every_evaluation_item_is_kept_aside(ingested):
    output, manifest, sources = ingested
    for source in (s for s in sources if s["format"] == "benchmark"):
        name, path = source["name"], Path(source["path"])
        untrained = set(manifest.stats["untrained_meta"].get(name, {}))
        assert "answer" in untrained, name
        rows = rows_of(output, DOCUMENTS, name) + rejected_rows(output, name)
        everything = match_key(" ".join(r["text"] + json.dumps({k: loads_meta(r["meta"]).get(k) for k in untrained}, ensure_ascii=False)
                                        for r in rows))
        for record in benchmark_rows(path):
            for field_path, value in strings(record):
                value = MARKUP.sub("\n", value)  # <text>, <question> wrappers are markup, not content
                assert all(match_key(p) in everything for p in pieces(value)), (name, field_path, value[:60])
