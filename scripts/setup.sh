#!/usr/bin/env bash
# Make this machine ready to run and test qes-monitoring, idempotently.
#
#   scripts/setup.sh           Python venv + deps, system packages, TimescaleDB,
#                              private Redis and PostgreSQL, var/env.sh
#   scripts/setup.sh --test    the same, plus promtool and amtool
#   scripts/setup.sh --stop    stop the private Redis and PostgreSQL cleanly
#
# Targets Debian 12 (and Ubuntu). A second run on a ready machine takes seconds.
#
# Environment:
#   REDIS_URL / DATABASE_URL   use these servers instead of starting private ones
#   QESMON_REDIS_PORT          private Redis port        (default 56379)
#   QESMON_PG_PORT             private PostgreSQL port   (default 55432)
#   QESMON_PG_MAJOR            PostgreSQL major version  (default: the cluster's,
#                              else the newest installed)
#   QESMON_TSDB_SUITE          Debian suite whose timescaledb source package is
#                              built when the extension is missing (default trixie)
#   QESMON_DEBIAN_MIRROR       default http://deb.debian.org/debian
#   QESMON_DEBIAN_KEYRING      keys the suite's InRelease must be signed with
#                              (default /usr/share/keyrings/debian-archive-keyring.gpg)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR="$ROOT/var"
VENV="$ROOT/.venv"
REDIS_PORT=${QESMON_REDIS_PORT:-56379}
PG_PORT=${QESMON_PG_PORT:-55432}
PG_DB=qesmon
TSDB_SUITE=${QESMON_TSDB_SUITE:-trixie}
DEBIAN_MIRROR=${QESMON_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_KEYRING=${QESMON_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

# debsrc_*: trusting a file of Debian's archive through the suite's signed InRelease.
# shellcheck source=scripts/debian-source.sh
. "$ROOT/scripts/debian-source.sh"

log() { printf '[setup] %s\n' "$*"; }
redact() { sed -E 's#(://[^:/@]*:)[^@/]*@#\1***@#' <<<"$1"; } # hide URL passwords
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die() {
	printf '[setup] ERROR: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

MODE=setup
WITH_TEST=0
for arg in "$@"; do
	case "$arg" in
	--test) WITH_TEST=1 ;;
	--stop) MODE=stop ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument: $arg (try --help)" ;;
	esac
done

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# Run a command as root (directly, or through sudo).
as_root() {
	if [ "$IS_ROOT" -eq 1 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root for: $* (not root and sudo is missing)"
	fi
}

# Run a PostgreSQL server tool (initdb, pg_ctl): these refuse to run as root,
# so as root they run as the postgres system user.
as_pg() {
	if [ "$IS_ROOT" -eq 1 ]; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# ---------------------------------------------------------------- cleanup --
POLICY_RC_ADDED=0
cleanup() {
	if [ "$POLICY_RC_ADDED" -eq 1 ]; then
		as_root rm -f /usr/sbin/policy-rc.d || true
	fi
}
trap cleanup EXIT

mkdir -p "$VAR"

# One setup at a time per checkout (concurrent `make test` runs). Daemons
# started below get `9>&-` so that they do not inherit (and hold) the lock.
exec 9>"$VAR/.setup.lock"
if ! flock -n 9; then
	log "another setup.sh is running in this checkout; waiting for it"
	flock 9
fi

# ----------------------------------------------------------------- python --
py_ok() { # usable interpreter: CPython 3.11 or 3.12 (Bytewax 0.21.1 has no 3.13 wheel)
	"$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)' \
		>/dev/null 2>&1
}

find_python() {
	local c
	for c in python3.11 python3.12 python3; do
		if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then
			command -v "$c"
			return 0
		fi
	done
	return 1
}

setup_python() {
	local py created=0
	if [ -e "$VENV/bin/python" ] || [ -e "$VENV/pyvenv.cfg" ]; then
		if [ -x "$VENV/bin/python" ] && py_ok "$VENV/bin/python"; then
			py="$VENV/bin/python"
		elif [ ! -e "$VENV/bin/python" ]; then
			warn "$VENV is incomplete (no bin/python); recreating it"
			rm -rf "$VENV"
		else
			die "$VENV does not run Python 3.11 or 3.12 (Bytewax 0.21.1 needs one of them): remove it (rm -rf .venv) and run again"
		fi
	fi

	if [ ! -x "$VENV/bin/python" ]; then
		if ! py=$(find_python); then
			if command -v apt-get >/dev/null 2>&1; then
				log "no python3.11/python3.12 found; installing python3 python3-venv"
				apt_install python3 python3-venv
			fi
			py=$(find_python) ||
				die "Python 3.11 or 3.12 is required (Bytewax 0.21.1 has no wheel for 3.13); install python3.11 or python3.12 and run again"
		fi
		if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
			local ver
			ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
			if command -v apt-get >/dev/null 2>&1 && [[ "$py" == /usr/bin/* ]]; then
				apt_install "python$ver-venv"
			fi
			"$py" -c 'import ensurepip, venv' >/dev/null 2>&1 ||
				die "$py cannot create virtual environments (install python$ver-venv)"
		fi
		py=$("$py" -c 'import sys; print(sys.executable)') # past pyenv shims
		log "creating $VENV with $py ($("$py" --version 2>&1))"
		"$py" -m venv "$VENV"
		created=1
	fi

	local stamp="$VAR/.pip-stamp"
	[ "$created" -eq 1 ] && rm -f "$stamp"
	if [ ! -f "$ROOT/pyproject.toml" ]; then
		warn "pyproject.toml not found: skipping 'pip install -e .[dev]'"
		return 0
	fi
	if [ -f "$stamp" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ]; then
		log "python deps up to date ($("$VENV/bin/python" --version 2>&1), pyproject.toml older than var/.pip-stamp)"
		return 0
	fi
	log "installing python deps: pip install -e '.[dev]'"
	(cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet -e '.[dev]') ||
		die "pip install -e '.[dev]' failed"
	touch "$stamp"
}

# -------------------------------------------------------- system packages --
APT_UPDATED=0
APT_LOCK_WAIT=600 # seconds to wait for another apt/dpkg run (unattended-upgrades...)

# apt_get ARGS...: apt-get as root that waits for the package manager's locks
# instead of failing while another install runs. DPkg::Lock::Timeout covers the
# dpkg locks; `apt-get update` takes the lists lock, which some apt versions do
# not wait for, so a lock failure is also retried until APT_LOCK_WAIT is over.
apt_get() {
	local err deadline=$((SECONDS + APT_LOCK_WAIT))
	err=$(mktemp)
	while :; do
		if as_root env DEBIAN_FRONTEND=noninteractive \
			apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@" 2>"$err" 9>&-; then
			cat "$err" >&2
			rm -f "$err"
			return 0
		fi
		cat "$err" >&2
		if grep -qE 'Could not get lock|Unable to acquire the dpkg frontend lock' "$err" &&
			[ "$SECONDS" -lt "$deadline" ]; then
			log "another package manager holds its lock: waiting"
			sleep 5
			continue
		fi
		rm -f "$err"
		return 1
	done
}
apt_install() {
	[ $# -gt 0 ] || return 0
	command -v apt-get >/dev/null 2>&1 ||
		die "missing system packages: $* (no apt-get here: install them by hand)"
	log "installing system packages: $*"
	# Without systemd, package scripts would start daemons (a Prometheus on
	# :9090, a system PostgreSQL...) through init scripts: forbid that while we
	# install, as Debian's container images do.
	if [ ! -d /run/systemd/system ] && [ ! -e /usr/sbin/policy-rc.d ]; then
		as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
		POLICY_RC_ADDED=1
	fi
	if [ "$APT_UPDATED" -eq 0 ]; then
		apt_get update -q
		APT_UPDATED=1
	fi
	apt_get install -y -q --no-install-recommends "$@"
	if [ "$POLICY_RC_ADDED" -eq 1 ]; then
		as_root rm -f /usr/sbin/policy-rc.d
		POLICY_RC_ADDED=0
	fi
}

pkg_installed() {
	command -v dpkg-query >/dev/null 2>&1 &&
		dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep 'install ok installed' >/dev/null
}

# want PKG [CMD...]: queue PKG unless it is installed or one of CMD is on PATH.
MISSING=()
want() {
	local pkg=$1 c
	shift
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 && return 0
	done
	pkg_installed "$pkg" && return 0
	MISSING+=("$pkg")
}

install_missing() {
	if [ "${#MISSING[@]}" -gt 0 ]; then
		apt_install "${MISSING[@]}"
	fi
	MISSING=()
}

have_pg_server() {
	compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null ||
		{ command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/postgres" ]; }
}

setup_base_packages() {
	want curl curl
	want xz-utils xz
	if [ -z "${REDIS_URL:-}" ]; then
		want redis-server redis-server
		want redis-tools redis-cli
	fi
	if [ -z "${DATABASE_URL:-}" ] && ! have_pg_server; then
		MISSING+=(postgresql)
	fi
	if [ "$WITH_TEST" -eq 1 ]; then
		want prometheus promtool
		want prometheus-alertmanager amtool
		want chromium chromium
		want chromium-driver chromedriver
		# tests/ops/test_debian_source.py checks the InRelease verification with them
		want gpgv gpgv
		[ -r "$DEBIAN_KEYRING" ] || MISSING+=(debian-archive-keyring)
	fi
	if [ "${#MISSING[@]}" -eq 0 ]; then
		log "system packages present"
	fi
	install_missing
}

# ------------------------------------------------------------- postgresql --
# Paths of the private cluster. As root, the server runs as `postgres`, which
# must reach them: if it cannot traverse the checkout (or the socket path is
# too long), the cluster lives under /var/tmp and var/pg* are symlinks to it.
PG_BASE=""
resolve_pg_paths() {
	if [ -L "$VAR/pg" ]; then
		PG_BASE=$(dirname "$(readlink "$VAR/pg")")
	elif [ -d "$VAR/pg" ]; then
		PG_BASE="$VAR"
	else
		PG_BASE="$VAR"
		local sock="$VAR/pgsock/.s.PGSQL.$PG_PORT"
		if [ "${#sock}" -gt 100 ]; then
			PG_BASE=fallback
		elif [ "$IS_ROOT" -eq 1 ] && [ "$MODE" = setup ]; then
			ensure_postgres_user
			if ! (cd / && runuser -u postgres -- test -x "$VAR"); then
				PG_BASE=fallback
			fi
		fi
		if [ "$PG_BASE" = fallback ]; then
			PG_BASE="/var/tmp/qesmon-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
			if [ "$MODE" = setup ]; then
				log "postgres cannot use $VAR; cluster goes to $PG_BASE (symlinked from var/)"
				mkdir -p "$PG_BASE/pg" "$PG_BASE/pgsock"
				chmod 755 "$PG_BASE"
				touch "$PG_BASE/pg.log"
				ln -sfn "$PG_BASE/pg" "$VAR/pg"
				ln -sfn "$PG_BASE/pgsock" "$VAR/pgsock"
				ln -sfn "$PG_BASE/pg.log" "$VAR/pg.log"
			fi
		fi
	fi
	PGDATA_DIR="$PG_BASE/pg"
	PGSOCK_DIR="$PG_BASE/pgsock"
	PG_LOG="$PG_BASE/pg.log"
}

ensure_postgres_user() {
	[ "$IS_ROOT" -eq 1 ] || return 0
	if ! getent passwd postgres >/dev/null; then
		log "creating system user postgres"
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin postgres
	fi
	command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is required when running as root"
}

detect_pg_major() {
	if [ -n "${QESMON_PG_MAJOR:-}" ]; then
		PG_MAJOR=$QESMON_PG_MAJOR
	elif [ -f "$PGDATA_DIR/PG_VERSION" ] && [ -x "/usr/lib/postgresql/$(cat "$PGDATA_DIR/PG_VERSION")/bin/postgres" ]; then
		PG_MAJOR=$(cat "$PGDATA_DIR/PG_VERSION")
	elif compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
		PG_MAJOR=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' |
			sed -E 's#^/usr/lib/postgresql/([^/]+)/bin/postgres$#\1#' | sort -n | tail -n1)
	elif command -v pg_config >/dev/null 2>&1; then
		PG_MAJOR=$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
	else
		die "PostgreSQL server not found (install postgresql)"
	fi
	[[ "$PG_MAJOR" =~ ^[0-9]+$ ]] || die "cannot tell the PostgreSQL major version (got '$PG_MAJOR'); set QESMON_PG_MAJOR"
	if [ -d "/usr/lib/postgresql/$PG_MAJOR/bin" ]; then
		PGBIN="/usr/lib/postgresql/$PG_MAJOR/bin"
	else
		PGBIN=$(pg_config --bindir)
	fi
	[ -x "$PGBIN/postgres" ] || die "no PostgreSQL $PG_MAJOR server in $PGBIN"
	PG_CONFIG="$PGBIN/pg_config"
}

pg_dir() { # sharedir | pkglibdir, before pg_config itself may be installed
	if [ -x "$PG_CONFIG" ]; then
		"$PG_CONFIG" "--$1"
	elif [ "$1" = sharedir ]; then
		echo "/usr/share/postgresql/$PG_MAJOR"
	else
		echo "/usr/lib/postgresql/$PG_MAJOR/lib"
	fi
}

timescaledb_installed() {
	[ -f "$(pg_dir sharedir)/extension/timescaledb.control" ] &&
		[ -f "$(pg_dir pkglibdir)/timescaledb.so" ]
}

# ------------------------------------------------------------ timescaledb --
# fetch_verified_sources DIR: the suite's main/source/Sources.xz into
# DIR/Sources-SUITE.xz, trusted only through the suite's InRelease: a good
# signature by a key of $DEBIAN_KEYRING (gpgv) for this suite and still valid,
# then the SHA-256 and size that the signed text gives for Sources.xz. Plain
# HTTP is fine for all of it: nothing unsigned is believed.
fetch_verified_sources() {
	local dl=$1 dist="$DEBIAN_MIRROR/dists/$TSDB_SUITE" signed="$1/Release-$TSDB_SUITE"
	local reason entry sha size url
	log "fetching $dist/InRelease"
	curl -fsSL --retry 3 --connect-timeout 30 -o "$dl/InRelease.part" "$dist/InRelease"
	reason=$(debsrc_verify_release "$dl/InRelease.part" "$DEBIAN_KEYRING" "$TSDB_SUITE" "$signed" 2>&1) ||
		die "refusing $dist/InRelease: $reason"
	mv "$dl/InRelease.part" "$dl/InRelease-$TSDB_SUITE"
	log "InRelease of $TSDB_SUITE: good signature by $DEBIAN_KEYRING"
	entry=$(debsrc_index_hash "$signed" main/source/Sources.xz 2>&1) ||
		die "refusing $dist/InRelease: $entry"
	sha=${entry% *}
	size=${entry#* }
	# By hash when the archive offers it: a mirror update between the two
	# downloads cannot then pair the new index with the old InRelease.
	url="$dist/main/source/Sources.xz"
	if grep -qx 'Acquire-By-Hash: yes' "$signed"; then
		url="$dist/main/source/by-hash/SHA256/$sha"
	fi
	log "fetching $url"
	curl -fsSL --retry 3 --connect-timeout 30 -o "$dl/Sources.xz.part" "$url"
	reason=$(debsrc_check_file "$dl/Sources.xz.part" "$sha" "$size" 2>&1) ||
		die "refusing Sources.xz of $TSDB_SUITE: $reason"
	mv "$dl/Sources.xz.part" "$dl/Sources-$TSDB_SUITE.xz"
	log "Sources.xz of $TSDB_SUITE matches the SHA-256 in the signed InRelease"
}

build_timescaledb() {
	local build="$VAR/build" dl="$VAR/build/dl"
	log "TimescaleDB missing for PostgreSQL $PG_MAJOR: building the Apache edition from Debian's source package ($TSDB_SUITE)"

	want cmake cmake
	if ! { command -v gcc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; }; then
		want build-essential
	fi
	want patch patch
	want gpgv gpgv
	[ -r "$DEBIAN_KEYRING" ] || MISSING+=(debian-archive-keyring)
	if ! pkg_installed "postgresql-server-dev-$PG_MAJOR" &&
		! { [ -x "$PG_CONFIG" ] && [ -f "$("$PG_CONFIG" --includedir-server)/postgres.h" ]; }; then
		MISSING+=("postgresql-server-dev-$PG_MAJOR")
	fi
	install_missing
	[ -x "$PG_CONFIG" ] || die "$PG_CONFIG not found after installing postgresql-server-dev-$PG_MAJOR"

	mkdir -p "$dl"
	fetch_verified_sources "$dl"

	local stanza version directory orig_sha orig_file deb_sha deb_file
	# awk reads to the end (no early exit) so xz gets no SIGPIPE under pipefail.
	stanza=$(xz -dc "$dl/Sources-$TSDB_SUITE.xz" | awk '
		found { next }
		/^Package: / { inpkg = ($2 == "timescaledb"); cs = 0 }
		!inpkg { next }
		/^Version: / { ver = $2 }
		/^Directory: / { dir = $2 }
		/^Checksums-Sha256:/ { cs = 1; next }
		cs && /^ / {
			if ($3 ~ /\.orig\.tar\.(xz|gz|bz2)$/) { osha = $1; ofile = $3 }
			else if ($3 ~ /\.debian\.tar\.(xz|gz|bz2)$/) { dsha = $1; dfile = $3 }
			next
		}
		{ cs = 0 }
		/^$/ { if (ver != "") found = 1 }
		END { if (ver != "") printf "%s\t%s\t%s\t%s\t%s\t%s\n", ver, dir, osha, ofile, dsha, dfile }
	')
	[ -n "$stanza" ] || die "no 'Package: timescaledb' stanza in $TSDB_SUITE Sources.xz"
	IFS=$'\t' read -r version directory orig_sha orig_file deb_sha deb_file <<<"$stanza"
	if [ -z "$directory" ] || [ -z "$orig_file" ] || [ -z "$orig_sha" ]; then
		die "incomplete timescaledb stanza in Sources.xz: $stanza"
	fi
	log "timescaledb $version ($directory/$orig_file)"

	local f sha
	for f in "$orig_file" "$deb_file"; do
		[ -n "$f" ] || continue
		if [ "$f" = "$orig_file" ]; then sha=$orig_sha; else sha=$deb_sha; fi
		if [ -f "$dl/$f" ] && (cd "$dl" && printf '%s  %s\n' "$sha" "$f" | sha256sum -c --status); then
			continue
		fi
		log "downloading $f"
		curl -fsSL --retry 3 --connect-timeout 30 -o "$dl/$f.part" "$DEBIAN_MIRROR/$directory/$f"
		(cd "$dl" && printf '%s  %s\n' "$sha" "$f.part" | sha256sum -c --status) ||
			die "sha256 mismatch for $f (expected $sha)"
		mv "$dl/$f.part" "$dl/$f"
	done

	local src="$build/timescaledb-${version//[^A-Za-z0-9.+-]/_}"
	rm -rf "$src"
	mkdir -p "$src"
	tar -xf "$dl/$orig_file" -C "$src" --strip-components=1
	# The +dfsg tarball drops tsl/ (Timescale License) and a few license
	# scripts, none of which the Apache-only build uses. Debian's own patches
	# (test expectations, no git hook) are applied as Debian builds it.
	if [ -n "$deb_file" ]; then
		tar -xf "$dl/$deb_file" -C "$src"
		if [ -f "$src/debian/patches/series" ]; then
			local p
			while read -r p _; do
				case "$p" in '' | '#'*) continue ;; esac
				log "applying Debian patch $p"
				patch -d "$src" -p1 -N -s --batch <"$src/debian/patches/$p" ||
					die "Debian patch $p does not apply"
			done <"$src/debian/patches/series"
		fi
	fi
	if [ ! -f "$src/CMakeLists.txt" ] || [ ! -d "$src/src" ] || [ ! -d "$src/sql" ]; then
		die "unexpected layout in $orig_file"
	fi

	local blog="$build/timescaledb-build.log" jobs
	jobs=$(nproc 2>/dev/null || echo 2)
	[ "$jobs" -gt 4 ] && jobs=4
	: >"$blog"
	log "configuring (cmake, APACHE_ONLY=1; log: ${blog#"$ROOT"/})"
	cmake -S "$src" -B "$src/build" \
		-DCMAKE_BUILD_TYPE=Release \
		-DAPACHE_ONLY=1 \
		-DREGRESS_CHECKS=OFF \
		-DTAP_CHECKS=OFF \
		-DWARNINGS_AS_ERRORS=OFF \
		-DSEND_TELEMETRY_DEFAULT=OFF \
		-DPG_CONFIG="$PG_CONFIG" >>"$blog" 2>&1 || {
		tail -n 40 "$blog" >&2
		die "cmake failed for timescaledb $version (see $blog)"
	}
	log "compiling (make -j$jobs)"
	make -C "$src/build" -j"$jobs" >>"$blog" 2>&1 || {
		tail -n 40 "$blog" >&2
		die "timescaledb build failed (see $blog)"
	}
	log "installing into $(pg_dir pkglibdir) and $(pg_dir sharedir)/extension"
	as_root make -C "$src/build" install >>"$blog" 2>&1 || {
		tail -n 40 "$blog" >&2
		die "timescaledb install failed (see $blog)"
	}
	timescaledb_installed || die "timescaledb.control still missing after install"
	log "timescaledb $version installed"
}

# ------------------------------------------------------------------ redis --
REDIS_CONF="$VAR/redis.conf"
REDIS_PID="$VAR/redis.pid"

redis_ping() {
	[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

pid_alive() { # pidfile
	[ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_redis() {
	if pid_alive "$REDIS_PID"; then
		local pid i
		pid=$(cat "$REDIS_PID")
		log "stopping Redis (pid $pid)"
		kill -TERM "$pid" # SIGTERM = SHUTDOWN: fsyncs the AOF and exits
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			[ "$i" -eq 100 ] && die "Redis (pid $pid) did not stop"
			sleep 0.1
		done
	else
		log "private Redis not running"
	fi
}

setup_redis() {
	if [ -n "${REDIS_URL:-}" ]; then
		log "REDIS_URL is set: using $(redact "$REDIS_URL"), not starting Redis"
		return 0
	fi
	mkdir -p "$VAR/redis"
	local conf
	conf=$(
		cat <<EOF
# Written by scripts/setup.sh: private Redis for qes-monitoring.
bind 127.0.0.1
port $REDIS_PORT
daemonize yes
dir "$VAR/redis"
pidfile "$REDIS_PID"
logfile "$VAR/redis.log"
# Stream entries must survive a restart.
appendonly yes
appendfsync everysec
# No single field (bulk string) a producer writes may exceed this: an oversize
# entry is refused by Redis instead of filling its memory.
proto-max-bulk-len 16mb
EOF
	)
	if [ ! -f "$REDIS_CONF" ] || [ "$(cat "$REDIS_CONF")" != "$conf" ]; then
		printf '%s\n' "$conf" >"$REDIS_CONF"
		if pid_alive "$REDIS_PID"; then
			log "Redis configuration changed: restarting"
			stop_redis
		fi
	fi
	if redis_ping; then
		log "Redis already answering on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	log "starting Redis on 127.0.0.1:$REDIS_PORT (data: var/redis, AOF everysec)"
	redis-server "$REDIS_CONF" 9>&- || die "redis-server failed to start (see var/redis.log)"
	local i
	for i in $(seq 1 100); do
		redis_ping && return 0
		sleep 0.1
	done
	tail -n 20 "$VAR/redis.log" >&2 || true
	die "Redis did not answer on port $REDIS_PORT (see var/redis.log)"
}

# ------------------------------------------------------------- postgresql --
psql_admin() { # psql as postgres on the private server
	"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

pg_running() { # our cluster (its postmaster.pid) is running
	[ -f "$PGDATA_DIR/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

stop_pg() {
	resolve_pg_paths
	if [ ! -f "$PGDATA_DIR/postmaster.pid" ]; then
		log "private PostgreSQL not running"
		return 0
	fi
	detect_pg_major
	if pg_running; then
		log "stopping PostgreSQL ($PGDATA_DIR)"
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
	else
		log "private PostgreSQL not running"
	fi
}

setup_pg() {
	if [ -n "${DATABASE_URL:-}" ]; then
		log "DATABASE_URL is set: using it, not starting PostgreSQL"
		return 0
	fi
	ensure_postgres_user

	# Directories the server (user postgres when we are root) writes to.
	mkdir -p "$PGDATA_DIR" "$PGSOCK_DIR"
	[ -e "$PG_LOG" ] || touch "$PG_LOG"
	if [ "$IS_ROOT" -eq 1 ]; then
		chown postgres: "$PGSOCK_DIR" "$PG_LOG"
		[ -f "$PGDATA_DIR/PG_VERSION" ] || chown postgres: "$PGDATA_DIR"
	fi

	if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
		local locale=(--no-locale)
		if locale -a 2>/dev/null | grep -iE '^c\.utf-?8$' >/dev/null; then
			locale=(--locale=C.UTF-8)
		fi
		log "initdb: new PostgreSQL $PG_MAJOR cluster in $PGDATA_DIR"
		as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres --encoding UTF8 "${locale[@]}" \
			>"$VAR/initdb.log" 2>&1 || {
			tail -n 20 "$VAR/initdb.log" >&2
			die "initdb failed (see var/initdb.log)"
		}
	elif [ "$(cat "$PGDATA_DIR/PG_VERSION")" != "$PG_MAJOR" ]; then
		die "$PGDATA_DIR holds a PostgreSQL $(cat "$PGDATA_DIR/PG_VERSION") cluster, not $PG_MAJOR: stop it and remove it, or set QESMON_PG_MAJOR"
	fi

	# Our settings live in qesmon.conf, included from postgresql.conf.
	if ! grep -q "^include_if_exists = 'qesmon.conf'" "$PGDATA_DIR/postgresql.conf"; then
		printf "\n# Added by qes-monitoring scripts/setup.sh\ninclude_if_exists = 'qesmon.conf'\n" \
			>>"$PGDATA_DIR/postgresql.conf"
	fi
	local conf
	conf=$(
		cat <<EOF
# Written by scripts/setup.sh (rewritten on every run): private cluster.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${PGSOCK_DIR//\'/\'\'}'
max_connections = 200
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_locks_per_transaction = 128
EOF
	)
	local changed=0
	if [ ! -f "$PGDATA_DIR/qesmon.conf" ] || [ "$(cat "$PGDATA_DIR/qesmon.conf")" != "$conf" ]; then
		printf '%s\n' "$conf" >"$PGDATA_DIR/qesmon.conf"
		[ "$IS_ROOT" -eq 1 ] && chown postgres: "$PGDATA_DIR/qesmon.conf"
		changed=1
	fi

	if pg_running; then
		if [ "$changed" -eq 1 ]; then
			log "PostgreSQL configuration changed: restarting"
			as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -m fast -w -t 60 restart >/dev/null 9>&-
		else
			log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
		fi
	elif "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
		warn "another PostgreSQL answers on 127.0.0.1:$PG_PORT (not $PGDATA_DIR); using it"
	else
		log "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PG_PORT (data: $PGDATA_DIR, log: $PG_LOG)"
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start >/dev/null 9>&- || {
			tail -n 20 "$PG_LOG" >&2
			die "PostgreSQL did not start (see $PG_LOG)"
		}
	fi

	if [ -z "$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
		log "creating database $PG_DB"
		psql_admin -d postgres -c "CREATE DATABASE $PG_DB"
	fi
	psql_admin -d "$PG_DB" -c 'SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb' ||
		die "could not enable timescaledb in database $PG_DB"
	TSDB_VERSION=$(psql_admin -d "$PG_DB" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
}

# ------------------------------------------------------------------- main --
if [ "$MODE" = stop ]; then
	stop_redis
	stop_pg
	log "stopped"
	exit 0
fi

START=$SECONDS
setup_base_packages
setup_python

TSDB_VERSION=""
if [ -z "${DATABASE_URL:-}" ]; then
	resolve_pg_paths
	detect_pg_major
	if timescaledb_installed; then
		log "TimescaleDB present for PostgreSQL $PG_MAJOR"
	else
		build_timescaledb
	fi
fi

setup_redis
if [ -z "${DATABASE_URL:-}" ]; then
	setup_pg
else
	log "DATABASE_URL is set: using it, not starting PostgreSQL"
fi

PRIVATE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
REDIS_URL_OUT=${REDIS_URL:-$PRIVATE_REDIS_URL}
DATABASE_URL_OUT=${DATABASE_URL:-postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DB}
{
	echo "# Written by scripts/setup.sh: source it (. var/env.sh) before running qesmon."
	printf 'export REDIS_URL=%q\n' "$REDIS_URL_OUT"
	printf 'export DATABASE_URL=%q\n' "$DATABASE_URL_OUT"
	if [ "$REDIS_URL_OUT" = "$PRIVATE_REDIS_URL" ]; then
		echo "# The private Redis above: 'qesmon up' sends demo traffic only to this one."
		printf 'export QESMON_PRIVATE_REDIS_URL=%q\n' "$PRIVATE_REDIS_URL"
	fi
} >"$VAR/env.sh.tmp"
mv "$VAR/env.sh.tmp" "$VAR/env.sh"

log "ready in $((SECONDS - START))s: REDIS_URL=$(redact "$REDIS_URL_OUT") DATABASE_URL=$(redact "$DATABASE_URL_OUT")${TSDB_VERSION:+ (timescaledb $TSDB_VERSION)}; run '. var/env.sh'"
