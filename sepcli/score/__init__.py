"""Per-document perplexity of corpora (`sepcli score`): records in, the same records out with
their scores; batched on one machine, or on a Ray cluster's actors."""

from sepcli.score.job import ScoreRecords
from sepcli.score.scorer import DocScore, DocScorer

__all__ = ["DocScore", "DocScorer", "ScoreRecords"]
