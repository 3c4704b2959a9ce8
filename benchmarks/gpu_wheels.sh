#!/usr/bin/env bash
# The wheels benchmarks/gpu.sh needs on a GPU machine without a package registry,
# fetched here into .whl/.
#
#   bash benchmarks/gpu_wheels.sh        # then copy .whl/ there with the checkout, run gpu.sh
#
# The machine this was written for reaches no package registry. Its image has jax, flax, optax,
# orbax, torch and scikit-learn, but not grain or tensorflow-datasets (core
# dependencies) nor their own needs, listed here one by one (--no-deps: each
# is named, at the version this project is tested with). Python 3.12,
# manylinux x86_64; about 11 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
# .whl/ ignored (copied along by name); in a worktree .git is a file,
# so the exclude file is asked of git.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    grain==0.2.18 array_record==0.8.6 tensorflow-datasets==4.9.10 dm-tree==0.1.10 \
    immutabledict==4.3.1 simple_parsing==0.1.9 docstring_parser==0.18.0 \
    tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 \
    toml==0.10.2 portpicker==1.6.0 importlib_resources==6.5.2
python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # a source release only: built here
# The commit the wheels were prepared at, for gpu.sh's rows (the device's copy has no .git).
{ git rev-parse HEAD; git status --porcelain --untracked-files=no | grep -q . && echo "(uncommitted changes)"; } \
    > .whl/COMMIT || true
du -sh .whl
