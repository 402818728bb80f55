#!/usr/bin/env bash
# bench/gpu_train.py on a GPU machine with no network, as one prepared command from the repository
# root: installs flow's missing dependencies from the wheels in .whl/, builds and installs flow
# (its C extensions) into /tmp/flow-bench, and runs the benchmark under a time cap. What it writes goes to
# $OUT (the device tool's folder that comes back; /tmp/gpu-train-out elsewhere):
#   gpu_train.txt   the table         gpu_train.json  every round's raw results
#   gpu_train.log   the peers' progress and errors    setup.log  install and build output, nvidia-smi
#
# The wheels (Python 3.12, x86-64; the device image has torch, numpy, pillow, tqdm and msgpack but
# not trio or simplejpeg), downloaded on a machine with pip's registry into .whl/ (ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl trio==0.35.0 outcome==1.3.0.post0 sniffio==1.3.1 attrs==26.1.0 idna==3.20 \
#     sortedcontainers==2.4.0 simplejpeg==1.9.0 msgpack==1.2.4 setuptools==84.2.1
# (setuptools: pyproject's ext-modules need >= 74.1 to build flow/_pixels.c and flow/_resample.c.)
# Then, with the device tool: run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=480).
# The whole run takes ~4-6 minutes (2 rounds x 4 peers x 60 steps). BENCH_ARGS adds options to
# gpu_train.py; PYTHON, WHEELS and SITE_DIR change the interpreter, the wheels' folder and where
# they install (a CPU check: PYTHON=$PWD/.venv/bin/python WHEELS=<its own wheels> BENCH_ARGS=--smoke).
set -uo pipefail
out=${OUT:-/tmp/gpu-train-out}
mkdir -p "$out"
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
site=${SITE_DIR:-/tmp/flow-bench}  # $site/deps: the wheels; $site/flow: flow, built
{
  date -u
  nvidia-smi
  "$python" -c "import sys, sysconfig, os; print(sys.version); h = sysconfig.get_paths()['include']; \
print('Python.h:', h, os.path.exists(os.path.join(h, 'Python.h')))"
  "$python" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site/deps" "$wheels"/*.whl \
    && PYTHONPATH="$site/deps" "$python" -m pip install --no-index --no-deps --no-build-isolation --no-compile \
      --no-cache-dir --upgrade --target "$site/flow" .
} > "$out/setup.log" 2>&1 || {
  tail -n 30 "$out/setup.log"; echo "gpu_run.sh: installing flow failed (setup.log)"; exit 1; }
export PYTHONPATH="$site/flow:$site/deps" PYTHONUNBUFFERED=1
# From /tmp: in the repository root, `import flow` would find the unbuilt source tree first.
(cd /tmp && "$python" -c "import flow._pixels, flow._resample, flow.actors.compute, trio, simplejpeg, torch; \
print('flow from', flow.__file__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())") \
  2>&1 | tee -a "$out/setup.log" || exit 1
# No peer starts after 250 s; a peer that hangs is cut at 120 s; the whole run at 390 s.
# shellcheck disable=SC2086
timeout 390 "$python" bench/gpu_train.py --work-dir /tmp/gpu-train-bench --time-budget 250 --peer-timeout 120 \
  --json "$out/gpu_train.json" ${BENCH_ARGS:-} 2> >(tee "$out/gpu_train.log" >&2) | tee "$out/gpu_train.txt"
