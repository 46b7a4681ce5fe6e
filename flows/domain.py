"""train-domain-classifier: the fastText TCM domain classifier from the `[train_domain]` sources.

Reads the labelled sources, samples at most `max_per_source` texts from each, adds generated
junk, holds out `holdout` of the groups (whole books), trains, prints precision / recall / F1 of
`P(tcm) >= threshold` on the held-out part, and writes the model with its figures beside it
(`MODEL.json`). The model path is then what the clean stage's config names.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from transforms.clean import domain_training as training

from .plain_flow import flow
from .config import BuildConfig, TrainDomainConfig, load_config
from .pipeline_info import FLOWS


class TrainingInputError(Exception):
    """[train_domain] inputs that cannot be used; one line."""


def check_training_inputs(config: BuildConfig, output: Optional[str]) -> Path:
    """The model path, after checking that every labelled source exists; TrainingInputError if not."""
    section = config.train_domain
    if not section.positive:
        raise TrainingInputError("train_domain.positive: name at least one source of TCM texts ({path, format})")
    if not section.negative and not section.generated_junk:
        raise TrainingInputError("train_domain.negative: name a source of other texts or set generated_junk > 0")
    for side in ("positive", "negative"):
        for number, labelled in enumerate(getattr(section, side)):
            if not labelled.path.exists():
                raise TrainingInputError(f"train_domain.{side}[{number}]: {labelled.path} does not exist")
    model = Path(output) if output else section.model
    if model is None:
        raise TrainingInputError("train-domain-classifier needs --output MODEL or train_domain.model in the config")
    return model


@task(name="read-labelled", task_run_name="read {labelled.path.name}", cache_policy=NONE)
def _read_source(labelled, label: int, limit: int, seed: int) -> list[training.Example]:
    examples = list(training.read_labelled(labelled.path, labelled.format, label))
    if not examples:
        raise training.TrainingError(f"{labelled.path}: no texts of at least {training.MIN_CHARS} characters")
    return training.sample_examples(examples, limit, seed)


@task(name="train-fasttext", cache_policy=NONE)
def _train(train: list[training.Example], params: training.TrainParams):
    return training.train_classifier(train, params)


def _params(section: TrainDomainConfig) -> training.TrainParams:
    return training.TrainParams(epoch=section.epoch, lr=section.lr, word_ngrams=section.word_ngrams,
                                dim=section.dim, bucket=section.bucket, seed=section.seed)


@flow(name="train-domain-classifier", description=FLOWS["train-domain-classifier"])
def train_domain_classifier_flow(config: Optional[str] = None, output: Optional[str] = None) -> dict:
    logger = get_run_logger()
    cfg = load_config(config)
    model_path = check_training_inputs(cfg, output)
    section = cfg.train_domain
    started = time.perf_counter()
    examples: list[training.Example] = []
    for label, side in ((1, section.positive), (0, section.negative)):
        for labelled in side:
            examples.extend(_read_source(labelled, label, section.max_per_source, section.seed))
    examples.extend(training.junk_examples(section.generated_junk, section.seed))
    train, held_out = training.split_examples(examples, section.holdout, section.seed)
    read_seconds = time.perf_counter() - started
    model = _train(train, _params(section))
    train_seconds = time.perf_counter() - started - read_seconds
    report = {
        "model": str(model_path),
        "labels": [training.TCM_LABEL, training.OTHER_LABEL],
        "train_rows": len(train),
        "train_rows_tcm": sum(e.label for e in train),
        "held_out": training.evaluate_classifier(model, held_out, section.threshold) if held_out else None,
        "params": {**section.model_dump(mode="json", exclude={"positive", "negative", "model"})},
        "sources": sorted({e.source for e in examples}),
        "seconds": {"read": round(read_seconds, 2), "train": round(train_seconds, 2)},
    }
    model_file, metrics_file = training.save_model(model, model_path, report)
    held = report["held_out"]
    if held:
        logger.info("held out %d rows: precision %.4f recall %.4f f1 %.4f at P(tcm) >= %s",
                    held["rows"], held["precision"], held["recall"], held["f1"], held["threshold"])
    logger.info("model %s, figures %s", model_file, metrics_file)
    return {**report, "metrics": str(metrics_file)}
