#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md ("On a GPU"), on a lent CUDA machine that has python3 with a CUDA torch but
# none of the lab's other dependencies and no network. From the repository root, with beside it (untracked):
#   .whl/        the wheels that machine's Python lacks (the device tool's notes: pip download --python-version ...)
#   .gl/         the GL loader .debs for EGL (libegl1, libglvnd0, libopengl0, libgl1, libglx0, ...), unpacked into /
#   .dev/taesd   the TAESD weights (a copy made for the run, never committed)
# Usage: bash benchmarks/gpu_checks.sh checks [SECONDS]   CUDA tests, extraction, SAE training, scoring (in SECONDS)
#        bash benchmarks/gpu_checks.sh main [SECONDS]     the main job at 256 px on CUDA, stopped after SECONDS
# Everything goes to $OUT/gpu_WHAT.log (the figures are the JSON lines in it).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
what=${1:-checks}
deadline=$(( $(date +%s) + ${2:-540} ))
exec >"$OUT/gpu_$what.log" 2>&1
export PYTHONUNBUFFERED=1 PYOPENGL_PLATFORM=egl FROBNOLAB_TAESD_DIR=$REPO/.dev/taesd
left() { echo $(( deadline - $(date +%s) )); }
step() { echo "=== $1 $(date -u +%T), $(left) s left"; }

step install
if [ ! -f /tmp/site/.done ]; then
  for f in "$REPO"/.gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$REPO"/.whl/*.whl || exit 1
  touch /tmp/site/.done
fi
rm -rf /tmp/fl  # this tree's code, every run
PYTHONPATH=/tmp/site python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --target /tmp/fl "$REPO" || exit 1
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f $egl ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
export PYTHONPATH=/tmp/fl:/tmp/site
# run from outside the repository: its top-level frobnolab/ folder would hide the installed package
mkdir -p /tmp/work && cd /tmp/work

step preflight
python3 - <<'PY' || exit 1
import torch, sae_lens, diffusers, trimesh, pyrender
print("torch", torch.__version__, torch.cuda.get_device_name(), "sae_lens", sae_lens.__version__,
      "diffusers", diffusers.__version__, "trimesh", trimesh.__version__)
from frobnolab.scenes.dataset import RenderConfig, render_dataset
render_dataset(RenderConfig("shapes", n=4, size=64, seed=0), "/tmp/pre", workers=1, progress=False)
print("EGL render ok")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
B=$REPO/benchmarks
T=$REPO/.dev/taesd

if [ "$what" = main ]; then
  step "main job, preset gpu (256 px), cuda"
  timeout "$(left)" python3 -m frobnolab.cli quickstart --preset gpu --device cuda --out /tmp/main256 --quiet
  echo "main rc=$?"
  cat /tmp/main256/stages.json 2>/dev/null
  for f in ae/training.json sae/training.json taesd-sae/training.json; do
    [ -f /tmp/main256/$f ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], \
json.dumps(r.get('evaluation', {}))[:600])" /tmp/main256/$f
  done
  step done
  exit 0
fi

step "tests that touch devices, with cuda"
timeout 150 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir "$REPO" -rs \
  "$REPO/tests/test_cuda.py"
echo "tests rc=$?"

step "scoring inputs (2000 renders at 64 px, TAESD enc1 on cuda, SAE 4096 on cuda)"
timeout 100 python3 $B/score_scaling.py --taesd $T --work /tmp/sb --widths 4096 --device cuda --setup-only

step "extraction vs the bare forward on cuda (256 images at 64 px)"
python3 -c "from frobnolab.scenes.dataset import RenderConfig, render_dataset; \
render_dataset(RenderConfig('shapes', n=256, size=64, seed=0), '/tmp/r256', progress=False)"
for h in enc5 enc1; do
  timeout 40 python3 $B/extract_throughput.py --dataset /tmp/r256 --model taesd:$T --hooks $h --device cuda
done

step "train-sae vs SAETrainer on cuda (TAESD enc1 store, width 512, k 16, 1M tokens)"
timeout 90 python3 $B/sae_throughput.py --store /tmp/sb/train --hook enc1 --device cuda
echo "sae rc=$?"

step "scoring 4096 x 1M on cuda"
timeout "$(left)" python3 $B/score_scaling.py --taesd $T --work /tmp/sb --widths 4096 --device cuda \
  --case 4096x1000000
echo "score rc=$?"
step done
