#!/bin/sh
# The Redis users of qes-monitoring, printed as an ACL file (redis.conf `aclfile`).
#
#   QESMON_KEY_PREFIX=qes REDIS_ADMIN_PASSWORD=... REDIS_PRODUCER_PASSWORD=... \
#   REDIS_PIPELINE_PASSWORD=... REDIS_NOTIFIER_PASSWORD=... REDIS_API_PASSWORD=... \
#       sh scripts/redis-users.sh >users.acl
#
# scripts/setup.sh writes the private Redis's file with it, docker-compose.yml's redis service
# runs it at every start, and tests/ops/test_credentials.py builds its users from its output.
# POSIX sh and busybox, nothing else. Passwords are stored as SHA-256 (`#<hex>`), never as
# they are; they must be URL-safe ([A-Za-z0-9._~-], at least 16) since they go into REDIS_URLs.
#
# Who may do what (P = the key prefix; every other key, command and channel is refused):
#   default   off: a connection without a user can do nothing.
#   admin     everything: the set-up, the tests, `qesmon up` itself, the demo, operators.
#   producer  what the platform gets: XADD to the metric streams (P:metrics, P:metrics:N,
#             P:metrics:backfill), and the SDK's exactly-once flush: EVALSHA of that one
#             script (qesmon/sdk/collector.py WRITE_ROUND; SCRIPT LOAD to bring it back after
#             a restart) and GET/SET of its round markers (P:sdk:*, <stream>:sdk:*), which
#             are all the script touches besides TYPE and XADD of the streams (Redis checks
#             the commands a script runs against the caller's ACL). No read of any stream,
#             no other key.
#   pipeline  reads and trims the metric streams; appends dead letters (P:metrics:dead),
#             alert transitions (P:alerts) and refused ones (P:alerts:dead); publishes the
#             live windows (channel P:live, hashes P:live:windows:*); its health hashes
#             and the rule status.
#   notifier  the consumer group on P:alerts (never XADD to it), P:alerts:dead, its health.
#   api       what the producer may (POST /record, the resource monitor's SDK), reads the
#             health hashes, the live windows and channel and P:alerts; the live page's
#             session secret P:live:session_secret, which no other user can read.
set -eu

# The SHA-1 of WRITE_ROUND: a changed script needs this line changed (a test compares them).
WRITE_ROUND_SHA=f17f78f3127e8b1225bafa2f76c18064b6517861

fail() {
	printf 'scripts/redis-users.sh: %s\n' "$*" >&2
	exit 1
}

P=${QESMON_KEY_PREFIX:-qes}
case "$P" in
"" | *[!A-Za-z0-9_.-]*) fail "QESMON_KEY_PREFIX must be 1-50 of [A-Za-z0-9_.-], got '$P'" ;;
esac
[ "${#P}" -le 50 ] || fail "QESMON_KEY_PREFIX must be 1-50 of [A-Za-z0-9_.-]"

hash() { # NAME: the SHA-256 of the password in variable NAME, checked
	eval "pw=\${$1:-}"
	[ -n "$pw" ] || fail "$1 is not set"
	case "$pw" in *[!A-Za-z0-9._~-]*) fail "$1 must be URL-safe: letters, digits and ._~- only" ;; esac
	[ "${#pw}" -ge 16 ] || fail "$1 must be at least 16 characters"
	printf '%s' "$pw" | sha256sum | cut -c1-64
}

ADMIN=$(hash REDIS_ADMIN_PASSWORD)
PRODUCER=$(hash REDIS_PRODUCER_PASSWORD)
PIPELINE=$(hash REDIS_PIPELINE_PASSWORD)
NOTIFIER=$(hash REDIS_NOTIFIER_PASSWORD)
API=$(hash REDIS_API_PASSWORD)

# The metric streams: STREAM_SHARDS is at most 1024, so shard numbers have 1 to 4 digits.
# The SDK's round markers are <P>:sdk:<id>, or <first stream>:sdk:<id> when it is given
# stream names rather than StreamKeys (the demo's backfill, a platform's own list).
D='[0-9]'
STREAMS=""
MARKERS="~$P:sdk:*"
for s in metrics metrics:$D metrics:$D$D metrics:$D$D$D metrics:$D$D$D$D metrics:backfill; do
	STREAMS="$STREAMS ~$P:$s"
	MARKERS="$MARKERS ~$P:$s:sdk:*"
done
# Appending as the SDK does (PING too: client pools check connections with it).
APPEND="+ping +xadd +type +script|load$STREAMS ($MARKERS +get +set) (+evalsha|$WRITE_ROUND_SHA$STREAMS $MARKERS)"
NONE="resetkeys resetchannels -@all"

echo "user default off $NONE"
echo "user admin on #$ADMIN ~* &* +@all"
echo "user producer on #$PRODUCER $NONE $APPEND"
echo "user pipeline on #$PIPELINE $NONE +ping" \
	"(+xread +xtrim +xinfo|stream$STREAMS)" \
	"(+xadd ~$P:metrics:dead ~$P:alerts ~$P:alerts:dead)" \
	"(+publish &$P:live)" \
	"(+hset +expire ~$P:live:windows:*)" \
	"(+hincrbyfloat +hset +hget +hvals ~$P:health:pipeline ~$P:health:pipeline:lag)" \
	"(+set ~$P:rules:status)"
echo "user notifier on #$NOTIFIER $NONE +ping" \
	"(+xgroup|create +xreadgroup +xautoclaim +xpending +xack ~$P:alerts)" \
	"(+xadd ~$P:alerts:dead)" \
	"(+hset +hincrby ~$P:health:notifier)"
echo "user api on #$API $NONE $APPEND +scan" \
	"(+hgetall ~$P:health:pipeline ~$P:health:notifier ~$P:health:supervisor ~$P:live:windows:*)" \
	"(+subscribe +unsubscribe &$P:live)" \
	"(+xrevrange +xread ~$P:alerts)" \
	"(+set +get ~$P:live:session_secret)"
