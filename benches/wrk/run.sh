#!/bin/sh
# See run.py.
exec python3 "$(dirname "$0")/run.py" "$@"
