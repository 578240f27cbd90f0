#!/usr/bin/env bash
# Pack this Python's standard library sources for training on the lent GPU (whose own Debian
# stdlib is split into packages and far smaller). Writes .corpus/stdlib-X.Y.Z.tar.xz (git-ignored
# through .git/info/exclude); name .corpus in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
stdlib=$($py -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
version=$($py -c "import platform; print(platform.python_version())")
mkdir -p .corpus
grep -qx "/.corpus/" .git/info/exclude 2>/dev/null || echo "/.corpus/" >> .git/info/exclude
(cd "$stdlib/.." && find "$(basename "$stdlib")" -name "*.py" -not -path "*site-packages*" -not -path "*__pycache__*" -size -300k \
    | sort | tar cJf "$OLDPWD/.corpus/stdlib-$version.tar.xz" -T -)
ls -la ".corpus/stdlib-$version.tar.xz"
