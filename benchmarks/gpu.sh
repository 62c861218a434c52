#!/usr/bin/env bash
# One short GPU session: install cnn beside the machine's own JAX/Flax/Optax/Orbax/PyTorch,
# run the fast tests on the GPU, time ResNet-50 bf16 in cnn and in the PyTorch reference,
# and train briefly on real data. Every output lands in $OUT (default ./gpu-out).
#
#   benchmarks/gpu.sh --fetch-wheels     # here, with network: wheels of what such a machine lacks -> .whl/
#   benchmarks/gpu.sh                    # there: no network; reads .whl/
#   benchmarks/gpu.sh --cpu              # rehearsal on a CPU machine: tiny sizes, same steps
#
# Environment: OUT (output folder), BUDGET_S (seconds for the whole script, default 450).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=$ROOT/.whl
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
    # Missing on the GPU image (see the device notes): grain and its native record reader, tensorboardX;
    # flax only as a fallback when the machine's is older than pyproject asks.
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" \
        grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 tensorboardX==2.6.5 flax==0.12.8
    exit $?
fi

CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-450}
START=$(date +%s)
export PYTHONUNBUFFERED=1
LOG=$OUT/gpu_log.txt
: > "$LOG"

say() { echo "== $* ($(( $(date +%s) - START )) s)" | tee -a "$LOG"; }

# part NAME LIMIT CMD...: run CMD for at most LIMIT seconds, never past the budget;
# its stdout -> $OUT/NAME.txt, its stderr -> the log (at most 8 files come back from a device run).
part() {
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) - 5 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then say "$name: skipped, budget spent"; return 0; fi
    say "$name (limit ${limit} s): $*"
    timeout -k 5 "$limit" "$@" > "$OUT/$name.txt" 2>> "$LOG"
    local rc=$?
    tail -n 30 "$OUT/$name.txt" >> "$LOG"
    say "$name: exit $rc"
}

# ---- install: the project without its dependencies, then only what the machine lacks --------------
say "install"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    "$PY" -c 'import sys, jax, jaxlib; print(sys.version); print("jax", jax.__version__, jax.devices())' 2>&1
    "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' 2>&1
    "$PY" -m pip list 2>/dev/null | grep -iE "^(flax|optax|orbax|typer|rich|grain|tensorboardx|jax|torch) "
} | tee -a "$LOG"
SITE=/tmp/cnn-site
mkdir -p "$SITE"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PY" - "$WHEELS" "$SITE" <<'PYEOF' 2>&1 | tee -a "$LOG"
# Install a carried wheel only where the machine lacks the package or has a version pyproject refuses.
import glob, os, re, subprocess, sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement

wheels, site = sys.argv[1], sys.argv[2]
reqs = [Requirement(r) for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
carried = {re.sub(r"[-_.]+", "-", os.path.basename(w).split("-")[0]).lower(): w for w in glob.glob(f"{wheels}/*.whl")}
extra = {"grain": ["array-record", "portpicker"]}  # grain's needs that the image lacks
todo = []
for r in reqs:
    try:
        have = metadata.version(r.name)
    except metadata.PackageNotFoundError:
        have = None
    ok = have is not None and r.specifier.contains(have, prereleases=True)
    print(f"{r.name}: {have or 'missing'}{'' if ok else ' -> carried wheel'}")
    if ok:
        continue
    for name in [r.name.lower(), *extra.get(r.name.lower(), [])]:
        if name != r.name.lower() and any(True for _ in metadata.distributions(name=name)):
            continue
        if name in carried:
            todo.append(carried[name])
        else:
            print(f"  no carried wheel for {name}")
if todo:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", site, *todo], check=False)
PYEOF
if [ "$CPU" = 1 ] && command -v cnn > /dev/null; then
    say "rehearsal: cnn is already installed here"
    CNN=(cnn)
elif "$PY" -m pip install -q --no-deps --no-build-isolation -e . >> "$LOG" 2>&1; then
    CNN=(cnn)
    command -v cnn > /dev/null || CNN=("$PY" -m cnncli.cli)
else
    say "editable install failed; using the source tree"
    export PYTHONPATH=$ROOT:$PYTHONPATH
    CNN=("$PY" -m cnncli.cli)
fi
"${CNN[@]}" --help > /dev/null 2>&1 && say "cnn runs" || say "cnn does not start"

# ---- the measurements -----------------------------------------------------------------------------------
NOAUG=$OUT/noaug.yaml  # the bench's ResNet-50 step without augmentation: the reference's exact work
if [ "$CPU" = 1 ]; then
    export JAX_PLATFORMS=cpu
    MODEL=resnet20; SIZE=(--input-size 16); BS=16; STEPS=3
    TESTS=(tests/test_bench.py -k "bad_input or wellformed")
    TRAIN_STEPS=10
else
    export JAX_PLATFORMS=cuda
    MODEL=resnet50; SIZE=(); BS=256; STEPS=60
    TESTS=(tests/test_bench.py tests/test_models.py tests/test_optim.py tests/test_train.py)
    TRAIN_STEPS=300
fi
printf 'model: {name: %s}\noptimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0001}\n' "$MODEL" > "$NOAUG"
part bench 150 "${CNN[@]}" bench "$MODEL" --dtype bfloat16 --batch-size $BS "${SIZE[@]}" --steps $STEPS --format json
part torch_eager 60 "$PY" benchmarks/torch_reference.py "$MODEL" --batch-size $BS --steps $STEPS --dtype bfloat16 --json
part torch_compiled 130 "$PY" benchmarks/torch_reference.py "$MODEL" --batch-size $BS --steps $STEPS \
    --dtype bfloat16 --compile --json
part bench_noaug 100 "${CNN[@]}" bench "$NOAUG" --dtype bfloat16 --batch-size $BS "${SIZE[@]}" --steps $STEPS \
    --format json
part train_digits 90 "${CNN[@]}" train configs/digits_resnet20.yaml --run-dir /tmp/cnn-run-digits --force \
    --set train.steps=$TRAIN_STEPS --set train.log_every_steps=50 --set train.eval_every_steps=100 \
    --set train.checkpoint_every_steps=100 --set output.tensorboard=false --format json
part tests 200 "$PY" -m pytest -q -m "not slow" -p no:cacheprovider "${TESTS[@]}"
rm -f "$NOAUG"
say "done"
