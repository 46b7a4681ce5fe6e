"""SparkEngine: the engine interface (`transforms.engines.Engine`) on a SparkSession."""
from __future__ import annotations

from typing import Mapping


class SparkEngine:
    """Runs stages on a SparkSession built lazily from the `[engine]` section, so that the
    session starts inside the task that runs the stage (a Prefect task, a test, spark-submit)."""

    name = "spark"

    def __init__(
        self,
        master: str = "local[2]",
        settings: Mapping[str, object] | None = None,
        batch_rows: int = 2048,
        session=None,
        checkpoint_dir: str | None = None,
    ):
        self.master = master
        # TOML gives numbers and booleans; Spark takes every setting as text (booleans lower-case).
        self.settings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (settings or {}).items()}
        self.batch_rows = batch_rows
        self.checkpoint_dir = checkpoint_dir
        self._session = session

    @property
    def session(self):
        if self._session is None:
            from .session import build_session

            self._session = build_session(self.master, self.settings)
            if self.checkpoint_dir:
                self._session.sparkContext.setCheckpointDir(self.checkpoint_dir)
        # Arrow batches handed to a step are at most batch_rows long, as in the local engine.
        self._session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.batch_rows))
        return self._session

    def map(self, step, batches, context=None):
        raise NotImplementedError(
            "this stage has no Spark implementation; run it with the local engine (flows do so for convert)"
        )

    def map_stage(self, step, inputs, output, manifest, kinds, context_of, progress=None, extras=None, finish=None):
        """`step` in `mapInArrow` over every kind present; see `transforms.engines.Engine.map_stage`."""
        from .stages import run_map_stage

        return run_map_stage(step, inputs, output, manifest, self, kinds, context_of, progress, extras, finish)

    def dedup(self, inputs, output, params, manifest, progress=None):
        """Repeated paragraphs, exact and MinHash clusters and the persistent index on Spark
        (`dedup.run_dedup`, `near_dedup.py`)."""
        from .dedup import run_dedup

        return run_dedup(inputs, output, params, manifest, self, progress)

    def sample(self, inputs, output, params, manifest, config_hash, progress=None):
        """Priority order and shards on Spark (`sampling.run_sample`)."""
        from .sampling import run_sample

        return run_sample(inputs, output, params, manifest, config_hash, self, progress)

    def pack(self, shards, output, params, manifest, tokenizer, progress=None):
        """Corpus shards packed with one Spark task each (`pack.run_pack`)."""
        from .pack import run_pack

        return run_pack(shards, output, params, manifest, self, tokenizer, progress)

    def __repr__(self) -> str:
        return f"SparkEngine(master={self.master!r})"
