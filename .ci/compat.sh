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
    local above=""
    if [ "$leg" = latest ]; then
        above=$(above_bounds "$venv/bin/python")
        echo "compat[latest]: ${above:-every fast mover's newest release is within setup.cfg's upper bounds}"
    fi
    if ! "$venv/bin/python" -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4; then
        echo "compat[$leg]: default suite FAILED after $(($(date +%s) - start)) s${above:+ (with $above)}"
        return 1
    fi
    echo "compat[$leg]: default suite passed after $(($(date +%s) - start)) s"
    if [ -n "$above" ]; then
        echo "compat[latest]: passes with $above: raise those upper bounds in setup.cfg (and the README's table)"
    fi
}

# The installed fast movers newer than setup.cfg's upper bounds, as "transformers 5.26.0 (bound 5.25.0), ...".
above_bounds() {
    "$1" - <<'PY'
import configparser
import importlib.metadata as md

from packaging.requirements import Requirement
from packaging.version import Version

cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
above = []
for line in filter(str.strip, cfg["options"]["install_requires"].split("\n")):
    req = Requirement(line)
    upper = [spec.version for spec in req.specifier if spec.operator == "<="]
    if upper and Version(md.version(req.name)) > Version(upper[0]):
        above.append(f"{req.name} {md.version(req.name)} (bound {upper[0]})")
print(", ".join(above))
PY
}

[ $# -gt 0 ] || set -- lowest latest
for leg in "$@"; do
    run_leg "$leg"
done
