"""The embedded curriculum: a seeded, bilingual synthetic data set for every training stage, with held-out files and
the facts that later stages are scored on (the scorers are in `minimind_hf.evaluation`).

>>> from minimind_hf.curriculum import ensure_curriculum
>>> paths = ensure_curriculum(seed=0)  # generated once into ~/.cache/minimind_hf/curriculum/<version>-<seed>
>>> paths["sft"]["train"], paths["sft"]["eval"]

See docs/data.md for the stages, splits, sizes and scoring rules.
"""

from .cache import CURRICULUM_VERSION, default_cache_dir, ensure_curriculum, write_curriculum
from .records import STAGES
from .statistics import iter_curriculum_text
from .tools import calculator, convert_units, execute_tool_call, make_tools, tool_schemas
from .world import World, build_world

__all__ = [
    "CURRICULUM_VERSION",
    "STAGES",
    "World",
    "build_world",
    "calculator",
    "convert_units",
    "default_cache_dir",
    "ensure_curriculum",
    "execute_tool_call",
    "iter_curriculum_text",
    "make_tools",
    "tool_schemas",
    "write_curriculum",
]
