"""The embedded curriculum: a seeded, bilingual synthetic data set for every training stage, with held-out files and
the scorers that later stages use to prove they worked.

>>> from minimind_hf.curriculum import ensure_curriculum
>>> paths = ensure_curriculum(seed=0)  # generated once into ~/.cache/minimind_hf/curriculum/<version>-<seed>
>>> paths["sft"]["train"], paths["sft"]["eval"]

See docs/data.md for the stages, splits, sizes and scoring rules.
"""

from .cache import CURRICULUM_VERSION, default_cache_dir, ensure_curriculum, write_curriculum
from .evaluation import (
    SCORERS,
    breakdown,
    evaluate,
    evaluate_model,
    evaluate_with_breakdown,
    faq_probe_records,
    load_eval_records,
    make_generate_fn,
    normalize,
    preference_accuracy,
    preference_margins,
    score,
)
from .records import STAGES
from .statistics import iter_curriculum_text
from .tools import calculator, convert_units, execute_tool_call, make_tools, tool_schemas
from .world import World, build_world

__all__ = [
    "CURRICULUM_VERSION",
    "SCORERS",
    "STAGES",
    "World",
    "breakdown",
    "build_world",
    "calculator",
    "convert_units",
    "default_cache_dir",
    "ensure_curriculum",
    "evaluate",
    "evaluate_model",
    "evaluate_with_breakdown",
    "execute_tool_call",
    "faq_probe_records",
    "iter_curriculum_text",
    "load_eval_records",
    "make_generate_fn",
    "make_tools",
    "normalize",
    "preference_accuracy",
    "preference_margins",
    "score",
    "tool_schemas",
    "write_curriculum",
]
