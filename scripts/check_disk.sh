#!/usr/bin/env bash
# Fail early, and say why, when the disk cannot hold the install: PyTorch's Linux wheel with its
# CUDA libraries takes about 6 GB in .venv, and pip unpacks it in TMPDIR first.
set -u
NEED_GB=${NEED_GB:-8}
for dir in "$1" "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}')
    [ -n "$free_gb" ] || continue  # a folder yet to be made: venv or pip will say what is wrong
    if [ "$free_gb" -lt "$NEED_GB" ]; then
        echo "Only ${free_gb} GB free on the disk holding $dir; installing langmim with PyTorch needs" \
             "about ${NEED_GB} GB (.venv plus pip's unpacking in TMPDIR). Free some space, or point" \
             "VENV=/other/disk/.venv or TMPDIR elsewhere (NEED_GB=N lowers the check)." >&2
        exit 1
    fi
done
