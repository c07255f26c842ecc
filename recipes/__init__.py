"""The recipes: one module per stage, each with `make_parser()` and `main(...)` (see `minimind_hf.training`).

python recipes/sft.py --config recipes/tiny/sft.yaml         # or: python -m recipes.sft ..., accelerate launch
from recipes import sft; sft.main(*sft.make_parser().parse_args_and_config(["--config", ...]))
"""
