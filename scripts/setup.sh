#!/usr/bin/env bash
# Make this machine ready to run and test qes-monitoring, idempotently.
#
#   scripts/setup.sh           Python venv + deps, system packages, TimescaleDB,
#                              private Redis and PostgreSQL with passwords, a Redis user
#                              and a database role per process, var/env.sh
#   scripts/setup.sh --test    the same, plus promtool and amtool
#   scripts/setup.sh --stop    stop the private Redis and PostgreSQL cleanly
#
# Targets Debian 12 (and Ubuntu). A second run on a ready machine takes seconds.
#
# Environment:
#   REDIS_URL / DATABASE_URL   use these servers instead of starting private ones
#   QESMON_VAR_DIR             where the servers, their passwords and env.sh live
#                              (default var/ of the checkout)
#   QESMON_REDIS_PORT          private Redis port        (default 56379)
#   QESMON_PG_PORT             private PostgreSQL port   (default 55432)
#   QESMON_KEY_PREFIX          key prefix the Redis users are made for (default qes)
#   QESMON_PG_MAJOR            PostgreSQL major version  (default: the cluster's,
#                              else the newest installed)
#   QESMON_TSDB_SUITE          Debian suite whose timescaledb source package is
#                              built when the extension is missing (default trixie)
#   QESMON_DEBIAN_MIRROR       default http://deb.debian.org/debian
#   QESMON_DEBIAN_KEYRING      keys the suite's InRelease must be signed with
#                              (default /usr/share/keyrings/debian-archive-keyring.gpg)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR=${QESMON_VAR_DIR:-$ROOT/var}
VENV="$ROOT/.venv"
REDIS_PORT=${QESMON_REDIS_PORT:-56379}
PG_PORT=${QESMON_PG_PORT:-55432}
KEY_PREFIX=${QESMON_KEY_PREFIX:-qes}
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
VAR=$(cd "$VAR" && pwd)

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
			PG_BASE="/var/tmp/qesmon-$(printf '%s' "$VAR" | sha256sum | cut -c1-12)"
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

# ---------------------------------------------------------------- secrets --
# The private servers' passwords: one file each in var/secrets (directory 0700, files 0600),
# generated once (64 hex digits) and kept, so that every later run and var/env.sh agree.
SECRETS="$VAR/secrets"

secret() { # NAME -> the password in var/secrets/NAME, generated when missing
	local file="$SECRETS/$1"
	if [ ! -s "$file" ]; then
		(
			umask 077
			mkdir -p "$SECRETS"
			rm -f "$file.tmp"
			od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file.tmp"
			mv "$file.tmp" "$file"
		)
		[ -s "$file" ] || die "could not write $file"
	fi
	cat "$file"
}

# ------------------------------------------------------------------ redis --
REDIS_CONF="$VAR/redis.conf"
REDIS_PID="$VAR/redis.pid"
REDIS_ACL="$VAR/redis-users.acl"
REDIS_USERS=(admin producer pipeline notifier api) # scripts/redis-users.sh says what each may do

redis_admin() { # redis-cli as admin on the private Redis (the password never on a command line)
	REDISCLI_AUTH=$(secret redis-admin) redis-cli --user admin -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}

redis_ping() {
	[ "$(redis_admin ping 2>/dev/null)" = PONG ]
}

redis_user_url() { # USER -> its URL on the private Redis
	printf 'redis://%s:%s@127.0.0.1:%s/0' "$1" "$(secret "redis-$1")" "$REDIS_PORT"
}

# write_redis_acl: var/redis-users.acl from scripts/redis-users.sh; true when it changed.
write_redis_acl() {
	local acl user
	local env=(QESMON_KEY_PREFIX="$KEY_PREFIX")
	for user in "${REDIS_USERS[@]}"; do
		env+=("REDIS_${user^^}_PASSWORD=$(secret "redis-$user")")
	done
	acl=$(env "${env[@]}" sh "$ROOT/scripts/redis-users.sh") || die "scripts/redis-users.sh failed"
	if [ -f "$REDIS_ACL" ] && [ "$(cat "$REDIS_ACL")" = "$acl" ]; then
		return 1
	fi
	rm -f "$REDIS_ACL.tmp"
	(umask 077 && printf '%s\n' "$acl" >"$REDIS_ACL.tmp")
	mv "$REDIS_ACL.tmp" "$REDIS_ACL"
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
	local conf acl_changed=0
	write_redis_acl && acl_changed=1
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
# Users and what each may do (scripts/redis-users.sh); no connection without a user.
aclfile "$REDIS_ACL"
EOF
	)
	if [ ! -f "$REDIS_CONF" ] || [ "$(cat "$REDIS_CONF")" != "$conf" ]; then
		printf '%s\n' "$conf" >"$REDIS_CONF"
		if pid_alive "$REDIS_PID"; then
			log "Redis configuration changed: restarting"
			stop_redis
		fi
	elif [ "$acl_changed" -eq 1 ] && pid_alive "$REDIS_PID"; then
		log "Redis users changed: reloading ${REDIS_ACL#"$VAR"/}"
		if [ "$(redis_admin ACL LOAD 2>&1)" != OK ]; then
			log "ACL LOAD refused (admin password changed?): restarting Redis"
			stop_redis
		fi
	fi
	if redis_ping; then
		log "Redis already answering on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	log "starting Redis on 127.0.0.1:$REDIS_PORT (data: var/redis, AOF everysec, users: ${REDIS_ACL#"$VAR"/})"
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
# No trust anywhere: TCP clients (127.0.0.1 only) give a password, checked with SCRAM; the
# socket (var/pgsock) takes only the OS user that runs the server, as postgres (peer), which
# is how the set-up administers the cluster without a password of its own.
PG_OS_USER=postgres
[ "$IS_ROOT" -eq 1 ] || PG_OS_USER=$(id -un)

psql_admin() { # psql as postgres on the private server, over its socket
	as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK_DIR" -p "$PG_PORT" -U postgres "$@"
}

# pg_set_password: postgres's password is var/secrets/pg-postgres (sent on stdin, not argv).
pg_set_password() {
	printf "SET password_encryption = 'scram-sha-256';\nALTER ROLE postgres PASSWORD '%s';\n" \
		"$(secret pg-postgres)" | psql_admin -d postgres >/dev/null ||
		die "could not set the password of postgres (see $PG_LOG)"
}

# The roles of the processes (qesmon_pipeline, qesmon_notifier, qesmon_api: scripts/pg-roles.sql,
# what each may do: migrations/grants.sql, applied by `qesmon migrate`).
PG_ROLES=(pipeline notifier api)

pg_role_url() { # NAME -> the URL of role qesmon_NAME on the private PostgreSQL
	printf 'postgresql://qesmon_%s:%s@127.0.0.1:%s/%s' "$1" "$(secret "pg-$1")" "$PG_PORT" "$PG_DB"
}

# pg_process_roles: create the roles or set their passwords again, from var/secrets/pg-NAME,
# handed to psql in its environment (never on a command line).
pg_process_roles() {
	(
		local role password
		for role in "${PG_ROLES[@]}"; do
			password=$(secret "pg-$role")
			export "POSTGRES_${role^^}_PASSWORD=$password"
		done
		psql_admin -d "$PG_DB" -f - <"$ROOT/scripts/pg-roles.sql" >/dev/null
	) || die "could not create the roles of the processes (scripts/pg-roles.sql; see $PG_LOG)"
}

# write_pg_file NAME TEXT: TEXT into the cluster's NAME; true when it changed.
write_pg_file() {
	local file="$PGDATA_DIR/$1"
	if [ -f "$file" ] && [ "$(cat "$file")" = "$2" ]; then
		return 1
	fi
	printf '%s\n' "$2" >"$file"
	if [ "$IS_ROOT" -eq 1 ]; then
		chown postgres: "$file"
	fi
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
		# pg_hba.conf is replaced below before the first start
		as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" --auth-local=peer --auth-host=reject -U postgres \
			--encoding UTF8 "${locale[@]}" >"$VAR/initdb.log" 2>&1 || {
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
	local conf hba
	conf=$(
		cat <<EOF
# Written by scripts/setup.sh (rewritten on every run): private cluster.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${PGSOCK_DIR//\'/\'\'}'
password_encryption = 'scram-sha-256'
max_connections = 200
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_locks_per_transaction = 128
EOF
	)
	hba=$(
		cat <<EOF
# Written by scripts/setup.sh (rewritten on every run): no trust anywhere.
# The socket: only the OS user that runs the server, as postgres (the set-up itself).
local all postgres peer map=owner
# TCP, listening on 127.0.0.1 only: a password, checked with SCRAM.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
EOF
	)
	local restart=0 reload=0
	write_pg_file qesmon.conf "$conf" && restart=1
	write_pg_file pg_hba.conf "$hba" && reload=1
	write_pg_file pg_ident.conf "owner $PG_OS_USER postgres" && reload=1

	if pg_running; then
		# before the new pg_hba.conf applies: a cluster of an older set-up trusts everyone
		# and its postgres has no password yet
		pg_set_password
		if [ "$restart" -eq 1 ]; then
			log "PostgreSQL configuration changed: restarting"
			as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -m fast -w -t 60 restart >/dev/null 9>&-
		elif [ "$reload" -eq 1 ]; then
			log "PostgreSQL authentication changed: reloading pg_hba.conf (password, no trust)"
			as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" reload >/dev/null
		else
			log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
		fi
	elif "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
		die "another PostgreSQL answers on 127.0.0.1:$PG_PORT (not $PGDATA_DIR): stop it, or choose another port with QESMON_PG_PORT"
	else
		log "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PG_PORT (data: $PGDATA_DIR, log: $PG_LOG)"
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start >/dev/null 9>&- || {
			tail -n 20 "$PG_LOG" >&2
			die "PostgreSQL did not start (see $PG_LOG)"
		}
		pg_set_password
	fi

	if [ -z "$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
		log "creating database $PG_DB"
		psql_admin -d postgres -c "CREATE DATABASE $PG_DB"
	fi
	psql_admin -d "$PG_DB" -c 'SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb' ||
		die "could not enable timescaledb in database $PG_DB"
	pg_process_roles
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

REDIS_URL_OUT=${REDIS_URL:-$(redis_user_url admin)}
DATABASE_URL_OUT=${DATABASE_URL:-postgresql://postgres:$(secret pg-postgres)@127.0.0.1:$PG_PORT/$PG_DB}
rm -f "$VAR/env.sh.tmp"
(
	umask 077 # it holds passwords: 0600 from its first byte
	{
		echo "# Written by scripts/setup.sh: source it (. var/env.sh) before running qesmon."
		echo "# The administrators' URLs (set-up, tests, CLI):"
		printf 'export REDIS_URL=%q\n' "$REDIS_URL_OUT"
		printf 'export DATABASE_URL=%q\n' "$DATABASE_URL_OUT"
		if [ -z "${REDIS_URL:-}" ]; then
			echo "# The private Redis: its users (scripts/redis-users.sh) are made for this key prefix,"
			printf 'export QESMON_KEY_PREFIX=%q\n' "$KEY_PREFIX"
			echo "# 'qesmon up' sends demo traffic only to it,"
			printf 'export QESMON_PRIVATE_REDIS_URL=%q\n' "$REDIS_URL_OUT"
			echo "# and starts each child with REDIS_URL set to the child's own user;"
			for user in pipeline notifier api; do
				printf 'export QESMON_%s_REDIS_URL=%q\n' "${user^^}" "$(redis_user_url "$user")"
			done
			echo "# what the platform gets: it may only append to the metric streams."
			printf 'export QESMON_PRODUCER_REDIS_URL=%q\n' "$(redis_user_url producer)"
		fi
		if [ -z "${DATABASE_URL:-}" ]; then
			echo "# 'qesmon up' starts each child with DATABASE_URL set to the child's own role"
			echo "# (scripts/pg-roles.sql; what each may do: migrations/grants.sql)."
			for role in "${PG_ROLES[@]}"; do
				printf 'export QESMON_%s_DATABASE_URL=%q\n' "${role^^}" "$(pg_role_url "$role")"
			done
		fi
	} >"$VAR/env.sh.tmp"
)
mv "$VAR/env.sh.tmp" "$VAR/env.sh"

log "ready in $((SECONDS - START))s: REDIS_URL=$(redact "$REDIS_URL_OUT") DATABASE_URL=$(redact "$DATABASE_URL_OUT")${TSDB_VERSION:+ (timescaledb $TSDB_VERSION)}; run '. ${VAR#"$ROOT"/}/env.sh'"
if [ -z "${REDIS_URL:-}" ]; then
	log "the platform's producer URL (append only): $(redact "$(redis_user_url producer)"), in full as QESMON_PRODUCER_REDIS_URL in ${VAR#"$ROOT"/}/env.sh"
fi
