"""The keep policy of a duplicate cluster on Spark, in one place for exact and near duplicates."""
from __future__ import annotations

from typing import Sequence

NODE = "_tcm_node"  # a row's dataset position as one number: file ordinal << 32 | row index


def keep_order(keep: Sequence[str], source_priority: Sequence[str] = ()):
    """Which copy of a cluster is kept: the criteria of `[dedup] keep` in order (highest quality,
    longest text, preferred source, first in the dataset), dataset position breaking ties; the
    first row in this order is kept. The one place the Spark engine states the keep policy."""
    from pyspark.sql import functions as F

    order = []
    for criterion in keep:
        if criterion == "quality":
            quality = F.col("_tcm_quality")
            order.append(F.when(quality.isNull() | F.isnan(quality), F.lit(float("inf"))).otherwise(-quality).asc())
        elif criterion == "longest":
            order.append(F.col("_tcm_length").desc())
        elif criterion == "source":
            ranks = F.create_map(*[v for i, s in enumerate(source_priority) for v in (F.lit(s), F.lit(i))]) if source_priority else None
            rank = F.coalesce(ranks[F.col("_tcm_source")], F.lit(len(source_priority))) if ranks is not None else F.lit(0)
            order.append(rank.asc())
        elif criterion == "first":
            order.append(F.col(NODE).asc())
        else:
            raise ValueError(f"unknown keep criterion {criterion!r}; expected quality, longest, source or first")
    order.append(F.col(NODE).asc())
    return order
