"""The search road: find the combination of passes whose artifact is smallest or fastest within a metric budget."""

from __future__ import annotations

from edgeopt.search.cache import Cache, cache_root
from edgeopt.search.evaluate import Evaluator, Outcome, Scored
from edgeopt.search.records import OBJECTIVES, Objective, TrialRecord, pareto_front
from edgeopt.search.run import SearchConfig, SearchResult, search
from edgeopt.search.space import Candidate, Context, Searchable, Stage, describe, seeds, select, suggest
from edgeopt.search.stages import STAGE_NAMES, STAGES

__all__ = ["OBJECTIVES", "STAGES", "STAGE_NAMES", "Cache", "Candidate", "Context", "Evaluator", "Objective",
           "Outcome", "Scored", "SearchConfig", "SearchResult", "Searchable", "Stage", "TrialRecord",
           "cache_root", "describe", "pareto_front", "search", "seeds", "select", "suggest"]
