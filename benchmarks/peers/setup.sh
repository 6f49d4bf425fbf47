#!/usr/bin/env bash
# The peers' own venv (benchmarks/peers/.venv), pinned by requirements.txt; torch goes in first, from its pin.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install -q --upgrade pip
"$here/.venv/bin/pip" install -q "$(grep '^torch==' "$here/requirements.txt")"
"$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "import monai, torch; print('peers venv: monai', monai.__version__, 'torch', torch.__version__)"
