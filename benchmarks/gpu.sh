#!/usr/bin/env bash
# One short GPU session: install cnn beside the machine's own JAX/Flax/Optax/Orbax/PyTorch,
# run the fast tests on the GPU, time ResNet-50 bf16 in cnn and in the PyTorch reference,
# and train briefly on real data. Every output lands in $OUT (default ./gpu-out).
#
#   benchmarks/gpu.sh --fetch-wheels     # here, with network: wheels of what such a machine lacks -> .whl/
#   benchmarks/gpu.sh                    # there: no network; reads .whl/
#   benchmarks/gpu.sh --cpu              # rehearsal on a CPU machine: tiny sizes, same steps
#
# Environment: OUT (output folder), BUDGET_S (seconds for the whole script, default 450), PARTS (below),
# VARIANTS (XLA_FLAGS to compare, one set per line), RESULTS_DIR (where gpu_results.py writes
# gpu-<date>.json; default: only $OUT).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=$ROOT/.whl
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
    # Missing on the GPU image (see the device notes): grain and its native record reader, tensorboardX,
    # and the test extra's import-linter.
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" \
        grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 tensorboardX==2.6.5 import-linter==2.17 grimp==3.20 \
        pytest-xdist==3.8.0 execnet==2.1.2
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
    grep -E "(FAILED|ERROR) " "$OUT/$name.txt" | head -n 40 >> "$LOG"
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
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = [Requirement(r) for r in project["dependencies"] + project.get("optional-dependencies", {}).get("test", [])]
reqs = [r for r in reqs if r.marker is None or r.marker.evaluate()]
carried = {re.sub(r"[-_.]+", "-", os.path.basename(w).split("-")[0]).lower(): w for w in glob.glob(f"{wheels}/*.whl")}
extra = {"grain": ["array-record", "portpicker"], "import-linter": ["grimp"]}  # needs the image lacks
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
# PARTS picks what runs, in its order (default below); each part's stdout lands in $OUT/<part>.txt.
#   tests     the whole fast test suite on the accelerator (pytest-xdist where installed)
#   profile   benchmarks/gpu_profile.py: cnn bench's step under jax.profiler, top device ops
#   variants  cnn bench under each XLA_FLAGS of $VARIANTS (one per line), JSON per variant
#   bnvar     benchmarks/bn_variance.py: the step with BatchNorm's shifted, fast and two-pass variances, alternated
#   bench     cnn bench (the real step, augmentation on device), then the PyTorch reference, eager and compiled
#   real      an ImageNet-like JPEG folder made here, packed, and trained from (steady images/s)
PARTS=${PARTS:-bench real tests}
if [ "$CPU" = 1 ]; then
    export JAX_PLATFORMS=cpu
    MODEL=resnet20; SIZE=(--input-size 16); BS=16; STEPS=3
    TESTS=(tests/test_bench.py -k "bad_input or wellformed")
    REAL=(--classes 2 --per-class 24 --size 64 --steps 6 --batch-size 8 --model resnet18 --input-size 32)
    XDIST=()
else
    export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
    MODEL=resnet50; SIZE=(); BS=256; STEPS=${STEPS:-60}
    TESTS=(tests)
    REAL=(--classes 100 --per-class 40 --size 400 --steps 160 --batch-size 256 --model resnet50 --input-size 224)
    XDIST=()
    "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${TEST_WORKERS:-12}")
fi
run_part() {
    case $1 in
    tests)
        # pyproject's addopts ask for pytest-xdist's two workers: replaced here by this machine's own count,
        # or by none where xdist is missing
        part tests "${TESTS_LIMIT:-240}" "$PY" -m pytest -v --tb=short -rfEs -p no:cacheprovider -o addopts= \
            -m "not slow" "${XDIST[@]}" --junitxml="$JUNIT" "${TESTS[@]}" ;;
    profile)
        part profile 120 "$PY" benchmarks/gpu_profile.py "$MODEL" --dtype bfloat16 --batch-size $BS "${SIZE[@]}" \
            --steps 10 --out /tmp/cnn-profile ;;
    bnvar)  # the cost of BatchNorm's shifted variance against the fast and two-pass ones, alternated
        local isz=(--input-size 224)
        [ ${#SIZE[@]} -gt 0 ] && isz=("${SIZE[@]}")
        part bnvar 150 "$PY" benchmarks/bn_variance.py --model "$MODEL" --dtype bfloat16 --batch-size $BS \
            "${isz[@]}" --steps 10 --rounds 3 ;;
    variants)
        local i=0 flags
        while IFS= read -r flags; do
            [ -z "$flags" ] && continue
            i=$((i + 1))
            echo "variant $i: $flags" >> "$LOG"
            XLA_FLAGS="$flags" part "variant$i" 80 "${CNN[@]}" bench "$MODEL" --dtype bfloat16 --batch-size $BS \
                "${SIZE[@]}" --steps $STEPS --format json
        done <<< "${VARIANTS:-}" ;;
    bench)
        part bench 150 "${CNN[@]}" bench "$MODEL" --dtype bfloat16 --batch-size $BS "${SIZE[@]}" --steps $STEPS \
            --format json
        part torch_eager 60 "$PY" benchmarks/torch_reference.py "$MODEL" --batch-size $BS --steps $STEPS \
            --dtype bfloat16 --json
        part torch_compiled 130 "$PY" benchmarks/torch_reference.py "$MODEL" --batch-size $BS --steps $STEPS \
            --dtype bfloat16 --compile --json ;;
    real)
        part real 200 "$PY" benchmarks/real_data.py --work /tmp/cnn-real "${REAL[@]}" --cnn "${CNN[*]}" ;;
    *) say "unknown part $1" ;;
    esac
}

JUNIT=/tmp/cnn-junit.xml  # read by gpu_results.py; kept out of $OUT (at most 8 files come back from a device run)
rm -f "$JUNIT"
for p in $PARTS; do run_part "$p"; done
"$PY" benchmarks/gpu_results.py "$OUT" --junit "$JUNIT" ${RESULTS_DIR:+--results "$RESULTS_DIR"} 2>&1 | tee -a "$LOG"
say "done"
