#!/usr/bin/env bash
# Make sure the Fashion-MNIST idx files are on disk: Debian's dataset-fashion-mnist where apt is
# available, otherwise a clear message naming the alternatives.
set -u
PY=${1:-python3}
found() { "$PY" -c "from langmim.data.fashion_mnist import find_fashion_mnist; find_fashion_mnist()" >/dev/null 2>&1; }
found && exit 0
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "Fashion-MNIST not found; installing the Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null && found && exit 0
fi
cat >&2 <<MSG
Fashion-MNIST was not found and could not be installed with apt. Any one of these works:
  - apt-get install dataset-fashion-mnist          (Debian/Ubuntu, as root)
  - $PY -m langmim.data.fashion_mnist --download   (needs network; saves to ~/.cache/langmim)
  - export LANGMIM_FASHION_MNIST=/dir/with/idx/files   (or pass data.root=/dir to langmim)
MSG
exit 1
