#!/usr/bin/env bash
# Installs the Debian packages the project needs when their files are missing:
#   dataset-fashion-mnist  -> /usr/share/datasets/fashion-mnist/ (images of the fmnist benchmark)
#   chromium, chromium-driver -> headless browser tests of the web page
#   wordnet-base          -> /usr/share/wordnet/ (the WordNet database the vocabulary tests check)
# As root it uses apt-get; otherwise it stops and says what to run.
set -euo pipefail
FMNIST_DIR=${DQECIR_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
need=()
if ! ls "$FMNIST_DIR"/*train-images* >/dev/null 2>&1; then need+=(dataset-fashion-mnist); fi
if ! command -v chromium >/dev/null 2>&1; then need+=(chromium); fi
if [ ! -f /usr/share/wordnet/data.noun ]; then need+=(wordnet-base); fi
if ! command -v chromedriver >/dev/null 2>&1; then need+=(chromium-driver); fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${need[*]}" >&2
  echo "install them with:  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  echo "(or point DQECIR_FMNIST_DIR at a folder holding the Fashion-MNIST idx files)" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${need[@]}" >/dev/null
