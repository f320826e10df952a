from .reference import gemfilter_scores_reference

__all__ = ["gemfilter_scores_reference"]
