#!/usr/bin/env bash
# Do the lowest versions pyproject.toml allows still work? Resolves `name==floor` for every dependency
# together with the torch and torchvision already installed (metadata only), installs the resolved set
# apart from torch into a scratch folder (about 200 MB of wheels, never torch), and runs the tests that
# exercise each dependency's API with that folder ahead of the environment's own packages. Nothing in the
# environment changes. Not part of .ci/run (it downloads); run it when a floor or an import changes:
#
#   bash .ci/min_versions.sh                      # default python: .venv/bin/python (has torch)
#   PYTHON=/path/to/python bash .ci/min_versions.sh tests/test_cli.py   # other tests than the default set
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${MIN_VERSIONS_DIR:-$(mktemp -d -t sslseg-min-XXXX)}
SITE="$WORK/site"
rm -rf "$SITE" && mkdir -p "$SITE"  # never mix with an earlier run's versions
echo "scratch folder: $WORK"
pip_() {  # pip, without the notes about index folders this machine lacks
    "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}

# 1. the floors: name==lower bound of each runtime dependency; torch and torchvision stay as installed
"$PY" - "$WORK" <<'EOF'
import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

work = Path(sys.argv[1])
pins = []
for dep in tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", dep).groups()
    if name in ("torch", "torchvision"):
        pins.append(f"{name}=={version(name).split('+')[0]}")
        continue
    low = re.search(r">=\s*([^,;\s]+)", spec)
    if low is None:
        sys.exit(f"pyproject.toml: {dep!r} has no lower bound (>=)")
    pins.append(f"{name}=={low.group(1)}")
(work / "floors.txt").write_text("\n".join(pins) + "\n")
print("floors:", " ".join(pins))
EOF

# 2. what a fresh `pip install` of the floors would bring (the newest of everything else they allow)
pip_ install --quiet --dry-run --ignore-installed --report "$WORK/resolved.json" \
    -r "$WORK/floors.txt"

# 3. install what differs from this environment, without dependencies (so never torch), into the scratch
#    folder; torch, torchvision and their CUDA libraries come from the environment itself
"$PY" - "$WORK" <<'EOF'
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

work = Path(sys.argv[1])
keep = ("torch", "torchvision", "triton", "nvidia-", "cuda-")
wanted = []
for item in json.loads((work / "resolved.json").read_text())["install"]:
    name, ver = item["metadata"]["name"], item["metadata"]["version"]
    if name.lower().startswith(keep):
        continue
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != ver:
        wanted.append(f"{name}=={ver}")
(work / "install.txt").write_text("\n".join(wanted) + "\n")
print("installing at their resolved versions:", " ".join(wanted) or "(nothing differs)")
EOF
if [ -s "$WORK/install.txt" ] && grep -q . "$WORK/install.txt"; then
    pip_ install --quiet --no-deps --only-binary=:all: --target "$SITE" -r "$WORK/install.txt"
fi

# 4. the tests that reach each dependency's API: smp's decoder and Unet, timm's LARS, lightning's Trainer,
#    kornia's blur, pydantic's config, typer's CLI, scikit-image/scipy post-processing, tifffile/imagecodecs
TESTS=("$@")
if [ ${#TESTS[@]} -eq 0 ]; then
    TESTS=(tests/test_methods_reconstruction.py tests/test_optim.py tests/test_augment.py
        tests/test_config.py tests/test_cli.py tests/test_data_io.py tests/test_postprocess.py
        tests/test_metrics_instance.py tests/test_weights.py tests/test_pretrain.py
        tests/test_dependency_floors.py)
fi
PYTHONPATH="$SITE:src" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" - "$WORK" <<'EOF'
import sys
from importlib.metadata import version

for name in ("segmentation-models-pytorch", "timm", "lightning", "kornia", "pydantic", "typer", "numpy",
             "scipy", "scikit-image", "torch"):
    print(f"  {name} {version(name)}")
EOF
PYTHONPATH="$SITE:src" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
