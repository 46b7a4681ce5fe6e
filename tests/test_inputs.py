"""What a user can point ingest at: record shapes, file formats, compression, encodings, folders;
and the command line around it (per-stage help, library defaults, relative paths).

The shared cases (input-shapes, encodings) run through `flows run ingest` on a copy of the case.
Formats are written from real records of ../shared/data; every format must give the same rows.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from schemas import CONVERSATIONS, DOCUMENTS
from schemas.records import loads_meta
from conftest import copy_shared_case
from transforms.ingest.importers import SourceError, check_file, import_file, scan_source
from transforms.ingest.importers.encoding import decode_bytes

REPO = Path(__file__).resolve().parents[1]


def _case(name: str, tmp_path: Path) -> Path:
    return copy_shared_case(name, tmp_path)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))


def _rows(folder: Path, kind: str) -> list[dict]:
    files = sorted((folder / kind).glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _ingest(tmp_path: Path, config_text: str, output: str = "out") -> tuple[int, Path]:
    (tmp_path / "config.toml").write_text(config_text, encoding="utf-8")
    code = main(["run", "ingest", "--config", str(tmp_path / "config.toml"), "--output", str(tmp_path / output), "--json"])
    return code, tmp_path / output


# -- the shared cases, through the command ---------------------------------------------------


def test_input_shapes_case_imports_every_record(tmp_path, prefect_harness, monkeypatch, capsys):
    case = _case("input-shapes", tmp_path)
    monkeypatch.chdir(case)  # relative --config and --output, as a user types them
    assert main(["run", "ingest", "--config", "config.toml", "--output", "out", "--json"]) == 0
    manifest = _manifest(case / "out")
    assert manifest["rows_in"] == {CONVERSATIONS: 12, DOCUMENTS: 4}
    assert manifest["rows_kept"] == {CONVERSATIONS: 12, DOCUMENTS: 4} and not any(manifest["rows_rejected"].values())
    kept = {name: figures["kept"] for name, figures in manifest["stats"]["sources"].items()}
    assert kept == {"qa-question-answer": 1, "qa-prompt-response": 1, "qa-query-response": 1, "pt-content": 1, "pt-text": 1,
                    "alp-gz": 3, "alp-zst": 3, "qa-gz": 1, "qa-csv": 2, "pq": 2}
    formats = {Path(f["path"]).name: f["format"] for f in manifest["stats"]["source_files"]}
    assert formats["qa.csv"] == "csv" and formats["docs.parquet"] == "parquet" and formats["alp.jsonl.zst"] == "jsonl"
    compressions = {Path(f["path"]).name: f.get("compression") for f in manifest["stats"]["source_files"]}
    assert compressions["alp.jsonl.zst"] == "zstd" and compressions["alp.jsonl.gz"] == "gzip" and compressions["qa.csv"] is None
    conversations = _rows(case / "out", CONVERSATIONS)
    questions = {c["messages"][0]["content"] for c in conversations}
    assert {"什么是血瘀？", "什么是阴虚？", "什么是气虚？", "人参有什么作用？", "黄芪有什么功效？"} <= questions
    assert all([m["role"] for m in c["messages"]] == ["user", "assistant"] for c in conversations)
    texts = [d["text"] for d in _rows(case / "out", DOCUMENTS)]
    assert any(t.startswith("肝主疏泄") for t in texts) and any(t.startswith("脾主运化") for t in texts)


def test_encodings_case_reads_every_file_and_names_its_encoding(tmp_path, prefect_harness, capsys):
    case = _case("encodings", tmp_path)
    assert main(["run", "ingest", "--config", str(case / "config.toml"), "--output", str(case / "out"), "--json"]) == 0
    manifest = _manifest(case / "out")
    encodings = {Path(f["path"]).name: f["encoding"] for f in manifest["stats"]["source_files"]}
    assert encodings["utf16le_bom.txt"] == "utf-16-le" and encodings["utf8_bom.txt"] == "utf-8"
    assert encodings["mixed_utf8_gbk.txt"] == "utf-8+gb18030" and encodings["big5.txt"] == "big5"
    assert len(encodings) == 7 and manifest["rows_in"][DOCUMENTS] == 7
    # Three files hold one text in three encodings: once decoded alike, two are repeats.
    assert manifest["rejected_by_reason"] == {"repeated_record": 2} or sum(manifest["rejected_by_reason"].values()) == 2
    rows = _rows(case / "out", DOCUMENTS) + _rows(case / "out" / "rejected", DOCUMENTS)
    texts = {loads_meta(d["meta"])["file"]: d["text"] for d in rows}
    assert texts["utf16le_bom.txt"].startswith("黄芪味甘性微温，归脾肺经")
    assert "当归补血活血" in texts["mixed_utf8_gbk.txt"] and "川芎活血行气" in texts["mixed_utf8_gbk.txt"]
    assert not texts["gb18030_bom.txt"].startswith("\ufeff")
    assert all("\ufffd" not in text for text in texts.values())


# -- formats: the same real records in every file kind -----------------------------------------


@pytest.fixture(scope="module")
def real_records(shared_data) -> list[dict]:
    """Alpaca records with history from CMtMedQA, and one whose answer holds a newline (CSV must
    quote it) and a comma."""
    records = json.loads((shared_data / "instructions" / "cmtmedqa_test.json").read_text(encoding="utf-8"))
    chosen = [r for r in records if r.get("history")][:3] + [r for r in records if "\n" in r["output"]][:1]
    assert len(chosen) == 4 and "\n" in chosen[-1]["output"]
    return [{"id": r["id"], "instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"],
             "history": r.get("history") or []} for r in chosen]


def _messages(path: Path, fields: dict | None = None) -> list[list[dict]]:
    records = list(import_file(path, "instructions", "s", "sft", {"fields": fields or {}}))
    assert all(r.reason is None for r in records), [r.reason for r in records]
    return [r.row["messages"] for r in records]


def _write_formats(records: list[dict], folder: Path) -> dict[str, Path]:
    """The records as JSON, JSONL, CSV, TSV (history as JSON text: flat files have no lists, so
    those drop it), Parquet, Arrow file and stream, each compression, and datasets folders."""
    import datasets

    folder.mkdir()
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    paths = {
        "json": folder / "a.json", "jsonl": folder / "a.jsonl", "csv": folder / "a.csv", "tsv": folder / "a.tsv",
        "parquet": folder / "a.parquet", "arrow": folder / "a.arrow", "arrow-stream": folder / "s.arrow",
        "gz": folder / "a.jsonl.gz", "bz2": folder / "a.jsonl.bz2", "xz": folder / "a.jsonl.xz",
        "zst": folder / "a.jsonl.zst", "csv.gz": folder / "b.csv.gz", "parquet.zst": folder / "b.parquet.zst",
    }
    paths["json"].write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    paths["jsonl"].write_bytes(lines)
    flat = [{k: v for k, v in r.items() if k != "history"} for r in records]
    for key, delimiter in (("csv", ","), ("tsv", "\t")):
        with open(paths[key], "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(flat[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(flat)
    table = pa.Table.from_pylist(records)
    pq.write_table(table, paths["parquet"])
    with pa.ipc.new_file(paths["arrow"], table.schema) as writer:
        writer.write_table(table)
    with pa.ipc.new_stream(paths["arrow-stream"], table.schema) as writer:
        writer.write_table(table)
    paths["gz"].write_bytes(gzip.compress(lines))
    paths["bz2"].write_bytes(bz2.compress(lines))
    paths["xz"].write_bytes(lzma.compress(lines))
    import zstandard

    paths["zst"].write_bytes(zstandard.ZstdCompressor().compress(lines))
    paths["csv.gz"].write_bytes(gzip.compress(paths["csv"].read_bytes()))
    paths["parquet.zst"].write_bytes(zstandard.ZstdCompressor().compress(paths["parquet"].read_bytes()))
    dataset = datasets.Dataset.from_list(records)
    paths["save_to_disk"] = folder / "saved"
    dataset.save_to_disk(str(paths["save_to_disk"]))
    paths["save_to_disk:dict"] = folder / "saved-dict"
    datasets.DatasetDict({"train": dataset.select(range(2)), "test": dataset.select(range(2, 4))}).save_to_disk(str(paths["save_to_disk:dict"]))
    card = folder / "hub-folder"
    (card / "data").mkdir(parents=True)
    pq.write_table(table, card / "data" / "train-00000-of-00001.parquet")
    (card / "README.md").write_text('---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: "data/train-*.parquet"\n---\n# a local copy\n', encoding="utf-8")
    paths["datasets-folder"] = card
    return paths


def test_every_format_and_compression_gives_the_same_conversations(real_records, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    paths = _write_formats(real_records, tmp_path / "formats")
    expected = _messages(paths["jsonl"])
    assert len(expected) == 4 and len(expected[0]) > 2, "history turns come first"
    last_turns = [m[-2:] for m in expected]
    for name, path in paths.items():
        got = _messages(path)
        if name.startswith(("csv", "tsv")):
            assert [m[-2:] for m in got] == last_turns, name  # no history in a flat file
        else:
            assert got == expected, name
    assert "\n" in _messages(paths["csv"])[-1][-1]["content"], "a quoted newline stays inside its cell"


def test_a_folder_source_reads_every_kind_and_lists_what_it_skipped(real_records, tmp_path, prefect_harness, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    paths = _write_formats(real_records, tmp_path / "data")
    (tmp_path / "data" / "notes.pdf").write_bytes(b"%PDF-1.4 not records")
    (tmp_path / "data" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    files, skipped = scan_source(tmp_path / "data", "instructions")
    assert {p.name for p in files} >= {"a.csv", "b.parquet.zst", "saved", "saved-dict", "hub-folder"}
    assert {(Path(s["path"]).name, s["reason"]) for s in skipped} == {("notes.pdf", "not instructions: .pdf"), (".DS_Store", "hidden")}
    code, out = _ingest(tmp_path, '[[sources]]\nname = "all"\nkind = "dataset"\npath = "data"\ncategory = "sft"\n')
    assert code == 0
    stats = _manifest(out)["stats"]
    assert {Path(s["path"]).name for s in stats["skipped_files"]} == {"notes.pdf", ".DS_Store"}
    formats = {Path(f["path"]).name: f["format"] for f in stats["source_files"]}
    assert formats["saved"] == "datasets" and formats["hub-folder"] == "datasets" and formats["a.arrow"] == "arrow"
    # The same four records in every file: one kept, the others rejected as repeats, none lost.
    manifest = _manifest(out)
    assert manifest["rows_kept"][CONVERSATIONS] == 4 + 4  # with history, and the flat files' last turns
    assert manifest["rows_in"][CONVERSATIONS] == manifest["rows_kept"][CONVERSATIONS] + manifest["rows_rejected"][CONVERSATIONS]


def test_unsupported_or_misdeclared_files_are_one_line_and_exit_2(tmp_path, prefect_harness, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "scan.pdf").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    (data / "blob.json").write_bytes(bytes(range(256)) * 4)
    pq.write_table(pa.table({"text": ["黄芪味甘，性微温。"]}), data / "docs.parquet")
    (data / "cut.parquet").write_bytes((data / "docs.parquet").read_bytes()[:-40])
    cases = [
        ("cut.parquet", "instructions", "not a readable Parquet file"),
        ("scan.pdf", "instructions", "a pdf file, not records"),
        ("blob.json", "instructions", "binary data of an unknown kind"),
        ("docs.parquet", "text", 'format = "instructions" reads'),
    ]
    for name, fmt, message in cases:
        with pytest.raises(SourceError, match=message):
            check_file(data / name, fmt)
        kind = "dataset" if fmt == "instructions" else "files"
        code, out = _ingest(tmp_path, f'[[sources]]\nname = "s"\nkind = "{kind}"\npath = "data/{name}"\nformat = "{fmt}"\ncategory = "sft"\n')
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and name in err[0] and message in err[0], err
        assert not out.exists()


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flows:")]
    assert len(err) == 1, err
    return err[0]


def test_a_format_that_does_not_fit_the_file_says_why_and_what_to_write(tmp_path, shared_data, prefect_harness, capsys):
    """Real files under the wrong format: a classical book (GB18030) read as monographs, the same
    book given as an instructions dataset, and real records whose `fields` name fields they lack.
    Each is one line, exit 2, naming the source, the file, what was wrong and what to write."""
    book = shared_data / "corpus" / "ancient-books" / "000-神农本草经.txt"
    books = tmp_path / "books"
    books.mkdir()
    (books / book.name).symlink_to(book)
    (tmp_path / "tcm_qr.json").symlink_to(shared_data / "instructions" / "tcm_qr.json")

    code, _ = _ingest(tmp_path, '[[sources]]\nname = "bk"\nkind = "files"\npath = "books"\nformat = "monograph"\ncategory = "books"\n', "mono")
    line = _one_error_line(capsys)
    assert code == 2 and "source bk:" in line and book.name in line, line
    assert 'no rows read as format = "monograph", which reads pharmacopoeia monographs' in line and 'write format = "book"' in line

    code, out = _ingest(tmp_path, f'[[sources]]\nname = "gb"\nkind = "dataset"\npath = "books/{book.name}"\nformat = "instructions"\ncategory = "sft"\n', "gb")
    line = _one_error_line(capsys)
    assert code == 2 and "source gb:" in line and book.name in line, line
    assert "plain text (gb18030), not records" in line and 'kind = "files" with format = "book"' in line
    assert not out.exists(), "refused before any work"

    fields = '[[sources]]\nname = "qr"\nkind = "dataset"\npath = "tcm_qr.json"\ncategory = "sft"\nfields = {question = "问题", answer = "output"}\n'
    code, _ = _ingest(tmp_path, fields, "fields")
    line = _one_error_line(capsys)
    assert code == 2 and "source qr:" in line and "tcm_qr.json" in line, line
    assert 'fields {question = "问题"} names a field no record of the file has' in line
    assert "its records' fields: instruction, input, output" in line and "write the file's own field names" in line
    code, out = _ingest(tmp_path, fields.replace('"问题"', '"instruction"'), "fixed")
    assert code == 0 and _manifest(out)["rows_kept"][CONVERSATIONS] > 0, "the fields it does have read as before"


def test_build_corpus_stops_on_a_format_that_does_not_fit_in_one_line(tmp_path, shared_data, prefect_harness, capsys):
    books = tmp_path / "books"
    books.mkdir()
    (books / "000-神农本草经.txt").symlink_to(shared_data / "corpus" / "ancient-books" / "000-神农本草经.txt")
    (tmp_path / "build.toml").write_text(
        '[[sources]]\nname = "bk"\nkind = "files"\npath = "books"\nformat = "monograph"\ncategory = "books"\n', encoding="utf-8")
    code = main(["run", "build-corpus", "--config", str(tmp_path / "build.toml"), "--workdir", str(tmp_path / "work")])
    line = _one_error_line(capsys)
    assert code == 2 and "source bk:" in line and "000-神农本草经.txt" in line and 'write format = "book"' in line, line


# -- shapes and field names --------------------------------------------------------------------


def test_every_common_record_shape(tmp_path):
    records = [
        {"question": "什么是气虚？", "answer": "元气不足。"},
        {"query": "什么是阴虚？", "response": "阴液亏少。"},
        {"prompt": "什么是血瘀？", "response": "血行不畅。"},
        {"prompt": "黄芪归何经？", "completion": "归脾、肺经。"},
        {"instruction": "解释", "input": "阴阳", "output": "对立统一。", "history": [["你好", "您好，请讲。"]], "system": "你是中医师。"},
        {"conversations": [{"from": "human", "value": "头痛怎么办？"}, {"from": "gpt", "value": "先辨外感内伤。"}]},
        {"messages": [{"role": "user", "content": "失眠"}, {"role": "assistant", "content": "宜养心安神。"}]},
        {"input": "口渴多饮", "output": "考虑消渴。"},
        {"text": "肝主疏泄，调畅气机。", "title": "肝"},
        {"content": "脾主运化，为气血生化之源。"},
    ]
    path = tmp_path / "shapes.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    imported = list(import_file(path, "instructions", "s", "sft"))
    assert [r.reason for r in imported] == [None] * 10
    assert [r.kind for r in imported] == [CONVERSATIONS] * 8 + [DOCUMENTS] * 2
    assert [m["role"] for m in imported[4].row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert imported[4].row["messages"][3]["content"] == "解释\n阴阳"
    assert imported[7].row["messages"][0]["content"] == "口渴多饮"
    assert imported[8].row["title"] == "肝"
    strings = tmp_path / "texts.json"
    strings.write_text(json.dumps(["第一段文字，论气血。", "第二段文字，论阴阳。"], ensure_ascii=False), encoding="utf-8")
    assert [(r.kind, r.row["text"]) for r in import_file(strings, "instructions", "s", "literature")] == [
        (DOCUMENTS, "第一段文字，论气血。"), (DOCUMENTS, "第二段文字，论阴阳。")]


def test_a_source_maps_its_own_field_names(tmp_path, prefect_harness, capsys):
    (tmp_path / "qa.csv").write_text("问题,回答,来源\n何为肾阳虚？,肾阳虚衰，温煦失职。,讲义\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"正文": "心主血脉，其华在面。", "篇名": "心"}, ensure_ascii=False) + "\n", encoding="utf-8")
    config = (
        '[[sources]]\nname = "qa"\nkind = "dataset"\npath = "qa.csv"\ncategory = "sft"\nfields = {question = "问题", answer = "回答"}\n'
        '[[sources]]\nname = "docs"\nkind = "dataset"\npath = "docs.jsonl"\ncategory = "literature"\nfields = {text = "正文", title = "篇名"}\n'
    )
    code, out = _ingest(tmp_path, config)
    assert code == 0
    (conv,) = _rows(out, CONVERSATIONS)
    assert conv["messages"] == [{"role": "user", "content": "何为肾阳虚？"}, {"role": "assistant", "content": "肾阳虚衰，温煦失职。"}]
    assert loads_meta(conv["meta"])["来源"] == "讲义"
    (doc,) = _rows(out, DOCUMENTS)
    assert (doc["text"], doc["title"]) == ("心主血脉，其华在面。", "心")
    code, _ = _ingest(tmp_path, config.replace('question = "问题"', 'questoin = "问题"'), "bad")
    assert code == 2 and "unknown name 'questoin'" in capsys.readouterr().err


def test_dialogues_are_repaired_not_lost_and_the_repairs_counted(tmp_path, prefect_harness, capsys):
    dialogues = [
        {"messages": [{"role": "user", "content": "我头痛"}, {"role": "user", "content": "两天了"}, {"role": "assistant", "content": "可服川芎茶调散。"}]},
        {"conversations": [{"from": "human", "value": "咳嗽"}, {"from": "gpt", "value": "有痰吗？"}, {"from": "human", "value": "黄痰"}]},
        {"messages": [{"role": "assistant", "content": "您好，哪里不舒服？"}, {"role": "user", "content": "胃胀"},
                      {"role": "assistant", "content": "饭后加重吗？"}, {"role": "assistant", "content": "可用保和丸。"}]},
        {"instruction": "失眠多梦", "output": "宜养心安神。", "history": [["你好", "请讲"], ["我睡不好", "多久了？"]]},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
    code, out = _ingest(tmp_path, '[[sources]]\nname = "d"\nkind = "dataset"\npath = "d.jsonl"\ncategory = "sft"\n')
    assert code == 0
    manifest = _manifest(out)
    assert manifest["rows_kept"][CONVERSATIONS] == 4
    assert manifest["stats"]["repairs"] == {"joined_turns": 2, "dropped_opening": 1, "dropped_unanswered": 1}
    by_first = {c["messages"][0]["content"]: c for c in _rows(out, CONVERSATIONS)}
    assert by_first["我头痛\n两天了"]["messages"][-1]["content"] == "可服川芎茶调散。"
    assert loads_meta(by_first["咳嗽"]["meta"])["unanswered"] == "黄痰"
    assert by_first["胃胀"]["messages"][-1]["content"] == "饭后加重吗？\n可用保和丸。"


def test_a_source_with_every_row_rejected_stops_the_command(tmp_path, prefect_harness, capsys):
    (tmp_path / "bad.jsonl").write_text('{"title": "a"}\n{"title": "b"}\n{"instruction": "问"}\n', encoding="utf-8")
    config = '[[sources]]\nname = "bad"\nkind = "dataset"\npath = "bad.jsonl"\ncategory = "sft"\n'
    code, out = _ingest(tmp_path, config)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flows:")]
    assert code == 2 and err == ["flows: error: source bad: all 3 rows rejected, most often malformed:no_shape "
                                 "(see rejected/ in the output; allow_all_rejected = true in the source accepts this)"]
    assert _manifest(out)["rows_rejected"][CONVERSATIONS] == 3, "the rejected rows are kept to read"
    code, _ = _ingest(tmp_path, config + "allow_all_rejected = true\n", "allowed")
    assert code == 0


# -- encodings ---------------------------------------------------------------------------------


def test_a_bom_decides_the_encoding():
    text = "黄芪味甘，性微温。\n当归补血。\n"
    for bom, codec, name in ((codecs.BOM_UTF16_LE, "utf-16-le", "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16-be"),
                             (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32-be"),
                             (codecs.BOM_UTF8, "utf-8", "utf-8")):
        decoded = decode_bytes(bom + text.encode(codec))
        assert (decoded.text, decoded.encoding, decoded.detector) == (text, name, "bom")


def test_mixed_lines_of_real_books_are_decoded_line_by_line(shared_data):
    """A UTF-8 file and a GBK file concatenated: each line readable, the GBK book's own short
    lines (valid UTF-8 by accident: <目录> reads <Ŀ¼>) stay GBK."""
    books = sorted((shared_data / "corpus").rglob("*.txt"))
    gbk = next(p.read_bytes()[:4000] for p in books if decode_bytes(p.read_bytes()[:4000]).encoding == "gb18030")
    utf8_text = "本草纲目，李时珍撰。\n黄芪，味甘微温。\n"
    decoded = decode_bytes(utf8_text.encode("utf-8") + gbk.rsplit(b"\n", 1)[0])
    assert decoded.encoding == "utf-8+gb18030" and decoded.detector == "per-line"
    assert decoded.text.startswith(utf8_text)
    assert decoded.text[len(utf8_text):] == gbk.rsplit(b"\n", 1)[0].decode("gb18030", errors="replace")


def test_utf8_lines_are_found_by_byte_rules_as_decoding_each_line_finds_them(shared_data):
    """The byte rules that rule lines out only ever rule out lines that do not decode: over a
    real GB18030 book, UTF-8 lines, cut sequences, stray bytes and every line ending."""
    from transforms.ingest.importers.encoding import _line_ends, _strict_utf8, _utf8_lines

    books = sorted((shared_data / "corpus" / "ancient-books").glob("*.txt"))
    gbk = next(p.read_bytes()[:20000] for p in books if decode_bytes(p.read_bytes()[:4000]).encoding == "gb18030")
    pieces = ["黄芪，味甘".encode(), "<目录>".encode("gbk"), "é".encode()[:1], b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
              "𠀀".encode(), b"ascii", b"\x80", "参".encode()[:2], b"\xff"]
    crafted = b"".join(pieces[(i * 5) % len(pieces)] + pieces[(i * 3) % len(pieces)] + (b"\n", b"\r\n", b"\r", b"")[i % 4]
                       for i in range(200))
    for data in (gbk, crafted, gbk + crafted, crafted + gbk, b"\xe4\xb8", b""):
        lines = data.splitlines(keepends=True)
        ends = _line_ends(data)
        assert [data[start:end] for start, end in zip([0, *ends[:-1]], ends)] == lines, "the lines splitlines finds"
        expected = {i: text for i, text in enumerate(map(_strict_utf8, lines)) if text is not None}
        assert _utf8_lines(data, ends) == expected
    assert 0 < len(_utf8_lines(crafted, _line_ends(crafted))) < len(crafted.splitlines())
    for data in (b"\r", b"\n", b"\r\n", b"a\r\rb\n\n", b"\r\n\r", b"x"):
        ends = _line_ends(data)
        assert [data[start:end] for start, end in zip([0, *ends[:-1]], ends)] == data.splitlines(keepends=True)


def test_charset_normalizer_decides_where_our_guess_reads_poorly():
    text = "Décoction de réglisse: à prendre après le repas, très efficace. " * 4
    decoded = decode_bytes(text.encode("cp1252"))
    assert decoded.detector == "charset-normalizer" and decoded.text == text
    # Where our guess is sure (short GB2312), the detector is not asked.
    assert decode_bytes("设计".encode("gbk")).detector == "ours"


# -- the command line --------------------------------------------------------------------------


def test_each_stage_has_its_own_help_with_its_config_defaults(capsys):
    for stage, expected in (("sample", "shard_rows = 100000"), ("decontaminate", "benchmarks = []"),
                            ("ingest", 'encoding = "auto"'), ("clean", "repair = true"), ("select", "min_chars = 20")):
        with pytest.raises(SystemExit) as exit_:
            main(["run", stage, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and f"usage: flows run {stage}" in out and expected in out, stage
    with pytest.raises(SystemExit):
        main(["run", "ingest", "--workdir", "x"])  # not an argument of ingest
    assert "unrecognized arguments: --workdir" in capsys.readouterr().err


def test_a_stage_without_config_uses_library_defaults_and_relative_paths(tmp_path, prefect_harness, monkeypatch, capsys):
    """The sample build cuts 100-row shards; the library's default is 100,000 rows a shard."""
    (tmp_path / "items" / DOCUMENTS).mkdir(parents=True)
    rows = [{"id": f"d{i}", "text": f"第{i}段，黄芪味甘。", "source": "s", "category": "literature"} for i in range(150)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "items" / DOCUMENTS / "part-00000.parquet")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "sample", "--input", "items", "--output", "corpus", "--json"]) == 0
    assert len(list((tmp_path / "corpus").glob("part-*.parquet"))) == 1
    assert main(["run", "validate", "--input", "corpus", "--output", "checked", "--json"]) == 0
    assert (tmp_path / "checked" / "_manifest.json").is_file()
    assert main(["run", "decontaminate", "--input", "items", "--output", "clean", "--json"]) == 0
    assert "no row is checked for evaluation items" in capsys.readouterr().err


def test_debris_is_counted_from_the_replaced_bytes(shared_data, tmp_path):
    """A real book page whose bytes are a third invalid: each run of bad bytes is one U+FFFD in the
    text, so what survives looks nearly clean; the replaced bytes say otherwise, and select rejects."""
    from schemas.records import conform
    from transforms.clean.steps import clean_documents
    from transforms.select.rules import select_batch

    book = next(p for p in sorted((shared_data / "corpus").rglob("*.txt")) if decode_bytes(p.read_bytes()[:3000]).encoding == "gb18030")
    lines = [line for line in book.read_bytes().splitlines() if len(line) > 40][:20]
    damaged = b"\n".join(line[:40] + b"\xff" * 20 for line in lines)
    path = tmp_path / "damaged.txt"
    path.write_bytes(damaged)
    (record,) = import_file(path, "text", "s", "books")
    meta = loads_meta(record.row["meta"])
    assert meta["replaced_bytes"] == 20 * len(lines) and meta["debris_bytes"] == 20 * len(lines)
    table = conform(pa.Table.from_pylist([record.row]), DOCUMENTS)
    kept, _ = clean_documents(table, {"min_chars": 1})
    assert kept["debris_ratio"][0].as_py() > 0.25  # the text alone has 1 mark in 21 characters
    _, rejected = select_batch(kept, DOCUMENTS, {"max_debris_ratio": 0.1})
    assert rejected.num_rows == 1 and rejected["reason"][0].as_py().startswith("debris_ratio")
