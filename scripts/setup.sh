# Sourced by scripts/demo and scripts/test: checks the machine and prepares .venv.
# Says exactly what to install when something is missing, and changes nothing outside the repo.

die() { echo "rollbackd setup: $*" >&2; exit 2; }

find_pg_bin() {
    command -v "$1" 2>/dev/null && return 0
    ls -1d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1 | grep . && return 0
    return 1
}

check_python() {
    PYTHON=${PYTHON:-python3}
    command -v "$PYTHON" >/dev/null || die "python3 not found: install Python 3.11+ (Debian: apt-get install python3 python3-venv)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python 3.11+ is needed, found $("$PYTHON" --version 2>&1)"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "Python's venv module is missing: apt-get install python3-venv"
}

check_postgres() {
    find_pg_bin initdb >/dev/null && find_pg_bin pg_ctl >/dev/null \
        || die "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        die "running as root needs the 'postgres' system user to run a throwaway server (apt-get install postgresql creates it)"
    fi
}

ensure_venv() {
    check_python
    if [ ! -x .venv/bin/python ]; then
        echo "rollbackd setup: creating .venv" >&2
        "$PYTHON" -m venv .venv || die "could not create .venv"
    fi
    # Reinstall only when the project's metadata changed since the last install.
    if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
        echo "rollbackd setup: installing rollbackd and its test dependencies into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
            || die "pip install failed (see above)"
        touch .venv/.installed
    fi
}
