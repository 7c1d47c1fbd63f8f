#!/usr/bin/env bash
# The CIFAR-10 campaign, continued from the state committed in results/cifar10/ (see
# results/cifar10/STATUS.md). Same as `make reproduce`; arguments go to
# `results/campaign.py run` (e.g. --commit-every 25, --only resnet110, --threads 1).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python results/campaign.py run "$@"
