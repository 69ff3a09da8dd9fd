# Shared by run.sh, test.sh and .ci/run: find cargo, install what the build needs.
# Sourced, not executed.

set -euo pipefail

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "error: cargo not found. Install Rust (https://rustup.rs) and run this again." >&2
      exit 2
    fi
  fi
}

# Installs Debian packages that are missing (as root, or through sudo when available).
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "error: need root (or sudo) to install: ${missing[*]}" >&2
      exit 2
    fi
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What building attnc needs beyond Rust: LLVM 19 (static, for the PTX code generator).
ensure_build_deps() {
  apt_install llvm-19-dev libpolly-19-dev libzstd-dev zlib1g-dev
  export LLVM_SYS_191_PREFIX=/usr/lib/llvm-19
}

# A Python with NumPy for the independent reference (tests/numpy/), in .tools/venv.
# Prints its path; installs python3-venv from Debian if venv is missing.
numpy_python() {
  local venv=.tools/venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import numpy" >/dev/null 2>&1; then
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
      apt_install python3 python3-venv >&2
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || { apt_install python3-venv >&2; python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install -q --disable-pip-version-check numpy==2.1.3 >&2
  fi
  echo "$PWD/$venv/bin/python"
}

# ptxas from NVIDIA's PyPI wheel (no GPU or CUDA install needed), in the same venv.
ptxas_path() {
  local venv=.tools/venv
  [ -x "$venv/bin/pip" ] || numpy_python >/dev/null
  local p="$venv/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas"
  # shellcheck disable=SC2086
  if ! ls $p >/dev/null 2>&1; then
    "$venv/bin/pip" install -q --disable-pip-version-check nvidia-cuda-nvcc-cu12==12.9.86 >&2
  fi
  # shellcheck disable=SC2086
  echo "$PWD/$(ls $p | head -1)"
}
