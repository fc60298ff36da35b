# Trusting a file of Debian's archive: the suite's InRelease must carry a good signature by a
# key of Debian's archive keyring (gpgv), and the file's SHA-256 and size come from the text
# that signature covers, never from anything else the mirror sends.
#
# Sourced by scripts/setup.sh and by tests/ops/test_debian_source.py; it only defines
# functions, and none of them downloads anything or exits. Each one that refuses says why on
# stderr and returns 1:
#
#   debsrc_verify_release INRELEASE KEYRING SUITE OUT   the signed text of INRELEASE -> OUT,
#                                                       for suite (or codename) SUITE, in date
#   debsrc_index_hash RELEASE PATH                      "SHA256 SIZE" of PATH in RELEASE's
#                                                       SHA256 list (a verified text)
#   debsrc_check_file FILE SHA256 SIZE                  FILE has that hash and size
#   debsrc_verify_index INRELEASE KEYRING SUITE PATH FILE
#                                                       all three: FILE is the suite's PATH
#                                                       (e.g. main/source/Sources.xz)
#
# DEBSRC_NOW (Unix seconds; default: now) is the time an InRelease's Valid-Until is held to.

debsrc_fail() {
	printf '%s\n' "$*" >&2
	return 1
}

# A signature counts when gpgv says GOODSIG for it (not EXPKEYSIG/REVKEYSIG), then VALIDSIG
# with a SHA-2 digest (8 SHA256, 9 SHA384, 10 SHA512, 11 SHA224). Like apt, a signature by a key
# the keyring lacks (a newer archive key) is ignored when another one is good, but a single BAD
# signature refuses the file: gpgv's own exit status would fail on the first and is not used.
debsrc_good_signatures() { # gpgv status file -> number of good signatures, or "bad"
	awk '
		$1 != "[GNUPG:]" { next }
		$2 == "NEWSIG" { good = 0 }
		$2 == "GOODSIG" { good = 1 }
		$2 == "BADSIG" { bad = 1 }
		$2 == "VALIDSIG" && good && $10 ~ /^(8|9|10|11)$/ { n++; good = 0 }
		END { if (bad) print "bad"; else print n + 0 }
	' "$1"
}

debsrc_verify_release() {
	local inrelease=$1 keyring=$2 suite=$3 out=$4 home verdict header valid_until until now
	[ -r "$keyring" ] || {
		debsrc_fail "keyring $keyring not found (package debian-archive-keyring)"
		return 1
	}
	command -v gpgv >/dev/null 2>&1 || {
		debsrc_fail "gpgv not found (package gpgv)"
		return 1
	}
	rm -f "$out"
	# One clearsigned message and nothing around it, as apt requires: a second message or
	# text outside the signature is how a signed file has been smuggled extra content.
	awk '
		/^-----BEGIN PGP SIGNED MESSAGE-----$/ { if (NR != 1) bad = 1; m++ }
		/^-----BEGIN PGP SIGNATURE-----$/ { s++ }
		/^-----END PGP SIGNATURE-----$/ { e++; end = NR; next }
		end && NF { bad = 1 }
		END { exit !(!bad && m == 1 && s == 1 && e == 1) }
	' "$inrelease" || {
		debsrc_fail "$inrelease is not one clearsigned message and nothing else"
		return 1
	}
	home=$(mktemp -d)
	# --output: only the text the signatures cover is kept; anything a mirror adds around the
	# signed block (a second SHA256 list, say) never reaches the hash look-up.
	gpgv --homedir "$home" --keyring "$keyring" --status-fd 3 --output "$out" "$inrelease" \
		3>"$home/status" >/dev/null 2>"$home/log" || true
	verdict=$(debsrc_good_signatures "$home/status")
	if [ "$verdict" = bad ] || [ "$verdict" = 0 ] || [ ! -s "$out" ]; then
		local why
		why=$(grep -E '^gpgv: (BAD|Can.t|no |invalid|verify)' "$home/log" | head -n 3 |
			sed 's/^gpgv: //' | paste -sd ';' -)
		rm -rf "$home" "$out"
		debsrc_fail "$inrelease: no good signature by a key of $keyring${why:+ ($why)}"
		return 1
	fi
	rm -rf "$home"

	# The header (up to the first checksum list) names the suite and how long it is valid.
	header=$(awk '/^[A-Za-z0-9-]+:[ \t]*$/ || /^ / { exit } { print }' "$out")
	if ! grep -qxF -e "Suite: $suite" -e "Codename: $suite" <<<"$header"; then
		rm -f "$out"
		debsrc_fail "$inrelease is signed, but for suite $(sed -n 's/^Suite: //p' <<<"$header") ($(sed -n 's/^Codename: //p' <<<"$header")), not $suite"
		return 1
	fi
	valid_until=$(sed -n 's/^Valid-Until: //p' <<<"$header")
	if [ -n "$valid_until" ]; then
		until=$(date -d "$valid_until" +%s 2>/dev/null) || {
			rm -f "$out"
			debsrc_fail "$inrelease: cannot read Valid-Until: $valid_until"
			return 1
		}
		now=${DEBSRC_NOW:-$(date +%s)}
		if [ "$now" -gt "$until" ]; then
			rm -f "$out"
			debsrc_fail "$inrelease expired on $valid_until (an old copy replayed, or a stale mirror)"
			return 1
		fi
	fi
}

debsrc_index_hash() {
	local release=$1 path=$2 found
	found=$(awk -v path="$path" '
		/^SHA256:/ { in_list = 1; next }
		in_list && /^ / { if ($3 == path) { print $1, $2; n++ } next }
		{ in_list = 0 }
		END { if (n != 1) exit 1 }
	' "$release") && [[ "$found" =~ ^[0-9a-f]{64}\ [0-9]+$ ]] || {
		debsrc_fail "$path is not listed once, with a SHA-256, in the signed release file"
		return 1
	}
	printf '%s\n' "$found"
}

debsrc_check_file() {
	local file=$1 sha=$2 size=$3 actual
	actual=$(wc -c <"$file" | tr -d ' ')
	if [ "$actual" != "$size" ]; then
		debsrc_fail "$file: $actual bytes, the signed release says $size"
		return 1
	fi
	actual=$(sha256sum <"$file" | cut -d' ' -f1)
	if [ "$actual" != "$sha" ]; then
		debsrc_fail "$file: sha256 $actual, the signed release says $sha"
		return 1
	fi
}

debsrc_verify_index() {
	local inrelease=$1 keyring=$2 suite=$3 path=$4 file=$5 signed entry
	signed=$(mktemp)
	debsrc_verify_release "$inrelease" "$keyring" "$suite" "$signed" || {
		rm -f "$signed"
		return 1
	}
	entry=$(debsrc_index_hash "$signed" "$path") || {
		rm -f "$signed"
		return 1
	}
	rm -f "$signed"
	debsrc_check_file "$file" "${entry% *}" "${entry#* }"
}
