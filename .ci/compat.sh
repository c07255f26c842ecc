#!/usr/bin/env bash
# The version matrix: the default test suite in a virtual environment of its own per leg, with the fast movers
# (transformers, TRL, PEFT, accelerate, datasets, tokenizers, huggingface_hub) pinned from setup.cfg.
#
#   bash .ci/compat.sh lowest    # every fast mover at its lower bound            (CI runs this leg)
#   bash .ci/compat.sh newest    # every fast mover at its upper bound            (what a fresh install gets today)
#   bash .ci/compat.sh latest    # the newest releases on PyPI, upper bounds lifted (before raising a bound)
#   bash .ci/compat.sh lowest latest   # several legs, one after another (`make test-compat`)
#
# Each leg prints the versions it resolved. A `latest` leg that passes with a newer release than an upper bound in
# setup.cfg means that bound can be raised to it; one that fails shows what a new release breaks before any user
# meets it. torch is installed first (the local CPU wheel), so no leg downloads CUDA. The venvs are .venv-compat-*.
set -euo pipefail
cd "$(dirname "$0")/.."

# Prints the pip requirements of one leg, read from setup.cfg's install_requires.
requirements() {
    python3 - "$1" <<'PY'
import configparser
import sys

from packaging.requirements import Requirement

FAST_MOVERS = {"transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "huggingface-hub"}
leg = sys.argv[1]
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
lines = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["dev"].split("\n")
for line in lines:
    if not line.strip():
        continue
    req = Requirement(line)
    name = req.name.lower().replace("_", "-")
    if name not in FAST_MOVERS:
        print(line.strip())
        continue
    bounds = {spec.operator: spec.version for spec in req.specifier}
    if not {">=", "<="} <= bounds.keys():
        sys.exit(f"setup.cfg: {req} needs a >= lower and a <= upper bound (the versions the matrix has passed)")
    pin = {"lowest": f"=={bounds['>=']}", "newest": f"=={bounds['<=']}", "latest": f">={bounds['>=']}"}[leg]
    print(f"{req.name}{pin}")
PY
}

quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

run_leg() {
    local leg=$1 venv=".venv-compat-$1" start
    start=$(date +%s)
    case "$leg" in lowest | newest | latest) ;; *) echo "usage: $0 lowest|newest|latest ..." >&2; exit 2 ;; esac
    mapfile -t reqs < <(requirements "$leg")
    rm -rf "$venv"
    python3 -m venv "$venv"
    quiet_pip "$venv/bin/pip" install --quiet torch==2.13.0
    # The project itself without its dependencies (their bounds would veto the `latest` leg), then its requirements
    # and the dev extra's, with the leg's pins.
    quiet_pip "$venv/bin/pip" install --quiet --no-deps -e .
    quiet_pip "$venv/bin/pip" install --quiet "${reqs[@]}"
    echo "compat[$leg]: $("$venv/bin/python" -c '
import importlib.metadata as md
names = ["transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "huggingface_hub", "torch"]
print(", ".join(f"{n} {md.version(n)}" for n in names))') (installed in $(($(date +%s) - start)) s)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider
    echo "compat[$leg]: default suite passed after $(($(date +%s) - start)) s"
}

[ $# -gt 0 ] || set -- lowest latest
for leg in "$@"; do
    run_leg "$leg"
done
