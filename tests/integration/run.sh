#!/bin/sh
# The integration suite: pytest drives the real crimuxd against real
# containerd (and dockerd), CNI and a loopback registry. Needs root.
if [ "$(id -u)" != 0 ]; then
	echo "integration tests need root (they start containerd and dockerd)"
	exit 77
fi
PYTHON3=${PYTHON3:-/usr/bin/python3}
srcdir=${CRIMUX_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$srcdir" && exec "$PYTHON3" -m pytest -p no:cacheprovider -v ${CRIMUX_PYTEST_ARGS:-} tests/integration
