"""TCM domain relevance: the lexicon, its density, the classifier, the tagger, the training flow,
and precision / recall of the domain filter on held-out shared data."""
from __future__ import annotations

import importlib.util
import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main as flows_main
from flows.config import ConfigError, parse_config
from transforms.clean import domain_training as training
from transforms.clean.domain import DomainTagger, classifier_input
from transforms.clean.lexicon import (
    CLASSES,
    LexiconError,
    LexiconMatcher,
    book_formulas, book_herbs,
    build_lexicon,
    read_lexicon,
    split_run_on,
)

REPO = Path(__file__).resolve().parents[1]
PHARMACOPOEIA = "corpus/pharmacopoeia"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("domain_eval", REPO / "benchmarks" / "domain_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the lexicon --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lexicon_file(shared_data, tmp_path_factory) -> Path:
    """`flows lexicon build` over the pharmacopoeia folder and two classical books."""
    books = shared_data / "corpus" / "ancient-books"
    output = tmp_path_factory.mktemp("lexicon") / "lexicon.txt"
    code = flows_main(["lexicon", "build", "--from", str(shared_data / PHARMACOPOEIA),
                       str(books / "072-医方考.txt"), str(books / "095-金匮方歌括.txt"), "--output", str(output)])
    assert code == 0
    return output


def test_lexicon_file_is_sorted_unique_term_tab_class(lexicon_file):
    lines = lexicon_file.read_text(encoding="utf-8").splitlines()
    terms = [line.split("\t")[0] for line in lines]
    assert terms == sorted(set(terms))
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] in CLASSES for line in lines)
    lexicon = read_lexicon(lexicon_file)
    assert len(lexicon) == len(lines) > 5000


def test_lexicon_holds_each_class_from_its_file(lexicon_file):
    lexicon = read_lexicon(lexicon_file)
    expected = {
        "黄芪": "herb", "延胡索": "herb", "元胡": "herb",        # pharmacopoeia title and its bracketed alias
        "补气升阳": "action", "固表止汗": "action",                # 黄芪's 功能与主治, before 用于
        "稀涎散": "formula", "桂枝汤": "formula",                  # 医方考 chapter titles
        "表虚证": "syndrome", "阴盛格阳证": "syndrome",            # syndrome term and synonym
        "时行感冒": "disease", "时邪感冒": "disease",              # disease term and synonym
        "足三里": "acupoint", "足阳明胃经": "meridian", "弦脉": "pulse", "辨证论治": "theory",  # seed list
    }
    assert {term: lexicon.get(term) for term in expected} == expected
    # Stages of disease listed in the syndrome standard, category headings, and prose are not terms.
    assert not {"晚期", "风证类", "外感时令类病", "此丹"} & set(lexicon)


def test_lexicon_pieces_read_the_real_layouts():
    assert split_run_on("邪闭经络证经络闭阻证") == ["邪闭经络证", "经络闭阻证"]
    assert split_run_on("虚中夹实证") == ["虚中夹实证"]
    text = "<篇名>桂枝汤\n属性：...\n\\x六君子汤\\x 治气虚挟痰。\n<篇名>此丹\n<篇名>中风门第一\n<篇名>丸\n"
    assert book_formulas(text) == ["桂枝汤", "六君子汤"]
    # A materia medica gives its herbs: chapters that open with a taste and a nature.
    materia = ("<篇名>丹沙\n内容：味甘，微寒。主身体五脏百病。\n<篇名>【野葛】\n\n内容：辛、甘，平。\n"
               "<篇名>（补）人参\n内容：甘温，大补元气。\n<篇名>草部\n内容：味苦，寒。\n<篇名>序\n内容：古者。\n")
    assert book_herbs(materia) == ["丹沙", "野葛", "人参"]
    # In a book of recipes a chapter that happens to open so is not enough.
    assert book_herbs("<篇名>结胸\n内容：苦寒之剂。\n<篇名>治方\n内容：用黄连。\n<篇名>又方\n内容：同上。\n<篇名>论\n内容：凡病。\n") == []


def test_lexicon_build_refuses_a_named_file_it_cannot_read_terms_from(shared_data, tmp_path, capsys):
    code = flows_main(["lexicon", "build", "--from", str(shared_data / "english" / "pubmed_abstracts.json"),
                       "--output", str(tmp_path / "lexicon.txt")])
    assert code == 2
    assert "not a lexicon source" in capsys.readouterr().err
    assert not (tmp_path / "lexicon.txt").exists()
    with pytest.raises(LexiconError, match="no such file"):
        build_lexicon([tmp_path / "missing.txt"])
    bad = tmp_path / "bad.txt"
    bad.write_text("黄芪\therb\n当归\tvegetable\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="bad.txt:2"):
        read_lexicon(bad)


def test_density_is_matched_han_share_leftmost_longest():
    matcher = LexiconMatcher(["当归", "当归补血汤", "黄芪", "气虚证"])
    texts = ["当归补血汤治气虚证。", "黄芪 and 当归", "no Han at all", ""]
    # 5 + 3 matched of 9 Han; 4 of 4; none; none
    assert matcher.density(texts).tolist() == pytest.approx([8 / 9, 1.0, 0.0, 0.0])


# -- the tagger ---------------------------------------------------------------------------------


def test_tagger_without_files_gives_zero_density_and_nan_score():
    columns = DomainTagger.load(None, None).tag(["黄芪补气", "hello"])
    assert columns["domain_lexicon"].dtype == np.float64 and columns["domain_lexicon"].tolist() == [0.0, 0.0]
    assert columns["domain_score"].dtype == np.float64 and np.isnan(columns["domain_score"]).all()


def test_tagger_load_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        DomainTagger.load(None, tmp_path / "missing.bin")


def test_classifier_input_is_characters_words_and_digit_runs():
    assert classifier_input("黄芪30g，Astragalus Radix\n补气") == "黄 芪 0 g ， astragalus radix 补 气"
    assert classifier_input(None) == ""


def _tag_in_worker(tagger: DomainTagger, texts: list[str]) -> dict:
    return tagger.tag(texts)


def test_tagger_pickles_small_and_tags_the_same_in_a_spawned_worker(evaluation, lexicon_file):
    tagger = DomainTagger.load(lexicon_file, evaluation["model_path"])
    texts = ["黄芪，味甘，微温。归肺、脾经。补气升阳，固表止汗。", "What is the dose of metformin?", None, ""]
    local = tagger.tag(texts)
    assert len(pickle.dumps(tagger)) < 1000  # paths only: the model stays on disk
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        remote = pool.apply(_tag_in_worker, (tagger, texts))
    for column in ("domain_lexicon", "domain_score"):
        assert remote[column].tolist() == pytest.approx(local[column].tolist())
    assert local["domain_score"][0] > 0.5 > local["domain_score"][1]
    assert local["domain_lexicon"][0] > 0.3 and local["domain_lexicon"][1] == 0.0
    assert local["domain_score"][2] == local["domain_score"][3]  # missing and empty text alike


# -- evaluation on held-out shared data ---------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(shared_data, tmp_path_factory) -> dict:
    """The benchmark's evaluation at a smaller size: 100 of the books, 1000 texts per source, 500 junk."""
    workdir = tmp_path_factory.mktemp("domain-eval")
    return _benchmark_module().evaluate_domain_filter(shared_data, workdir, max_per_source=1000, junk=500, books=100)


def test_held_out_set_is_whole_books_and_every_source(evaluation):
    assert evaluation["held_out_books"] >= 10
    sources = evaluation["classifier"][0.5]["per_source"]
    assert set(sources) == {"ancient-books", "2022年中药药典.txt", "mtcmb_tcm_chgd.jsonl", "tcm_qr.json",
                            "huatuo26m_test.json", "pubmed_abstracts.json", "generated-junk"}


def test_classifier_precision_and_recall_on_held_out_data(evaluation):
    # Measured 0.97 / 0.99 (P(tcm) >= 0.5); the misses are junk of one random phrase repeated.
    figures = evaluation["classifier"][0.5]
    assert figures["precision"] >= 0.93 and figures["recall"] >= 0.95, figures
    kept = {source: v["kept"] for source, v in figures["per_source"].items()}
    assert kept["pubmed_abstracts.json"] <= 0.02 and kept["huatuo26m_test.json"] <= 0.05
    assert kept["ancient-books"] >= 0.95 and kept["2022年中药药典.txt"] >= 0.95


def test_lexicon_precision_and_recall_on_held_out_data(evaluation):
    # Measured 0.91 / 0.77 at density >= 0.05: general medical Q&A shares the disease names
    # (感冒, 咳嗽) and herbs (生姜, 人参), and monograph assay text is sparse in terms.
    figures = evaluation["lexicon"][0.05]
    assert figures["precision"] >= 0.85 and figures["recall"] >= 0.7, figures
    kept = {source: v["kept"] for source, v in figures["per_source"].items()}
    assert kept["pubmed_abstracts.json"] == 0.0 and kept["generated-junk"] == 0.0
    strict = evaluation["lexicon"][0.1]
    assert strict["precision"] >= 0.9 and strict["precision"] > figures["precision"]


# -- the training flow --------------------------------------------------------------------------


def _train_config(tmp_path: Path, shared: Path, **extra: str) -> Path:
    lines = [
        "[train_domain]",
        'model = "model/domain.bin"',
        "max_per_source = 300",
        "generated_junk = 200",
        "epoch = 5",
        f'positive = [{{ path = "{shared / PHARMACOPOEIA / "2022年中药药典.txt"}", format = "monograph" }},'
        f' {{ path = "{shared / "instructions" / "tcm_qr.json"}", format = "instructions" }}]',
        f'negative = [{{ path = "{shared / "instructions" / "huatuo26m_test.json"}", format = "instructions" }},'
        f' {{ path = "{shared / "english" / "pubmed_abstracts.json"}", format = "texts" }}]',
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    path = tmp_path / "train.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_train_domain_classifier_flow_writes_model_and_figures(prefect_harness, shared_data, tmp_path, capsys):
    config = _train_config(tmp_path, shared_data)
    assert flows_main(["run", "train-domain-classifier", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "held out:" in printed and "precision" in printed
    model = tmp_path / "model" / "domain.bin"  # relative to the config file
    figures = json.loads((tmp_path / "model" / "domain.bin.json").read_text(encoding="utf-8"))
    held = figures["held_out"]
    assert held["rows"] == held["tp"] + held["fp"] + held["fn"] + held["tn"] > 0
    assert held["precision"] >= 0.9 and held["recall"] >= 0.9, held
    assert figures["params"]["max_per_source"] == 300
    scores = DomainTagger.load(None, model).tag(["【性味与归经】甘，微温。归肺、脾经。", "Randomised trial of statins."])
    assert scores["domain_score"][0] > 0.5 > scores["domain_score"][1]


def test_train_flow_inputs_are_checked_before_any_work(shared_data, tmp_path, capsys):
    empty = tmp_path / "empty.toml"
    empty.write_text("[train_domain]\n", encoding="utf-8")
    assert flows_main(["run", "train-domain-classifier", "--config", str(empty), "--output", str(tmp_path / "m.bin")]) == 2
    assert "train_domain.positive" in capsys.readouterr().err
    config = _train_config(tmp_path, shared_data)
    config.write_text(config.read_text(encoding="utf-8").replace("tcm_qr.json", "absent.json"), encoding="utf-8")
    assert flows_main(["run", "train-domain-classifier", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "train_domain.positive[1]" in error and "absent.json does not exist" in error


def test_train_domain_config_section(tmp_path):
    config = parse_config('[train_domain]\nmodel = "m/domain.bin"\npositive = [{ path = "books", format = "book" }]\n', tmp_path)
    assert config.train_domain.model == tmp_path / "m" / "domain.bin"
    assert config.train_domain.positive[0].path == tmp_path / "books"
    assert config.train_domain.generated_junk == 1000 and config.train_domain.holdout == 0.2
    with pytest.raises(ConfigError, match="unknown key 'train_domain.epochs'"):
        parse_config("[train_domain]\nepochs = 3\n", tmp_path)
    with pytest.raises(ConfigError, match="train_domain.positive.0.format"):
        parse_config('[train_domain]\npositive = [{ path = "x", format = "pdf" }]\n', tmp_path)


def test_training_reads_texts_format_and_refuses_one_sided_data(shared_data, tmp_path):
    abstracts = list(training.read_labelled(shared_data / "english" / "pubmed_abstracts.json", "texts", 0))
    assert len(abstracts) == 299 and all(e.label == 0 for e in abstracts)
    objects = tmp_path / "objects.json"
    objects.write_text('[{"a": 1}]', encoding="utf-8")
    with pytest.raises(training.TrainingError, match="JSON list or JSON lines of strings"):
        list(training.read_labelled(objects, "texts", 0))
    with pytest.raises(training.TrainingError, match="both TCM"):
        training.train_classifier(abstracts[:20], training.TrainParams())
    assert training.generated_junk(8, 1) == training.generated_junk(8, 1) != training.generated_junk(8, 2)


# -- the clean stage calls the tagger, select decides --------------------------------------------


def test_clean_stage_tags_domain_and_select_removes_off_domain_rows(evaluation, lexicon_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.config import SelectConfig
    from schemas import document_id
    from schemas.dataset import StageManifest
    from transforms.engines.local import LocalEngine
    from transforms.stages import run_clean, run_select

    texts = {
        "tcm": "黄芪，味甘，微温。归肺、脾经。补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。用于气虚乏力，食少便溏。",
        "general": "糖尿病患者平时应该注意控制饮食，定期监测血糖，按医嘱服用二甲双胍等降糖药物，并且适当进行有氧运动。",
    }
    rows = [{"id": document_id("s", t), "text": t, "source": "s", "category": "web", "meta": "{}"} for t in texts.values()]
    source = tmp_path / "in" / "documents"
    source.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), source / "part-00000.parquet")
    clean_params = {"min_chars": 5, "domain_lexicon": str(lexicon_file), "domain_model": str(evaluation["model_path"])}
    engine = LocalEngine(1)
    run_clean([tmp_path / "in"], tmp_path / "clean", clean_params, StageManifest(stage="clean"), engine)
    tagged = pq.read_table(tmp_path / "clean" / "documents").to_pylist()
    by_text = {row["text"][:4]: row for row in tagged}
    assert by_text["黄芪，味"]["domain_score"] > 0.5 > by_text["糖尿病患"]["domain_score"]
    assert by_text["黄芪，味"]["domain_lexicon"] > by_text["糖尿病患"]["domain_lexicon"]

    select_params = SelectConfig(min_domain_score=0.5).model_dump()
    manifest = run_select([tmp_path / "clean"], tmp_path / "select", select_params, StageManifest(stage="select"), engine)
    assert manifest.rows_in["documents"] == 2 and manifest.rows_kept["documents"] == 1
    reason = pq.read_table(tmp_path / "select" / "rejected" / "documents").column("reason").to_pylist()[0]
    assert reason.startswith("domain_score:") and reason.endswith("<0.5"), reason
