#!/bin/sh
# deb-version.sh [DESCRIBE]: maps a `git describe --always --dirty` string
# (default: this checkout's) to a Debian package version.
#   v1.2.3                  -> 1.2.3
#   v1.2.3-4-gabc1234       -> 1.2.3+git4.abc1234
#   v1.2.3-4-gabc1234-dirty -> 1.2.3+git4.abc1234+dirty
#   abc1234 (no tag)        -> 0~git20260102150405.abc1234 (commit time)
#   dev, or nothing         -> 0~dev
# The commit time of untagged builds comes from git (for HEAD), or from
# DEB_VERSION_DATE (YYYYMMDDhhmmss) when set.
set -eu
d=${1-}
if [ -z "$d" ]; then
	d=$(git describe --always --dirty 2>/dev/null || echo dev)
fi
dirty=
case $d in
*-dirty)
	dirty=+dirty
	d=${d%-dirty}
	;;
esac
d=${d#v}
if expr "$d" : '[0-9a-f]\{7,\}$' >/dev/null; then
	# No tag: an abbreviated commit hash.
	date=${DEB_VERSION_DATE-}
	if [ -z "$date" ]; then
		date=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null || echo 0)
	fi
	v=0~git$date.$d
elif expr "$d" : '[0-9]' >/dev/null; then
	# TAG or TAG-N-gHASH; a tag may itself contain hyphens (1.0-rc1).
	if expr "$d" : '.*-[0-9][0-9]*-g[0-9a-f][0-9a-f]*$' >/dev/null; then
		hash=${d##*-g}
		rest=${d%-g*}
		n=${rest##*-}
		tag=${rest%-*}
		v=$tag+git$n.$hash
	else
		v=$d
	fi
	# Debian allows [A-Za-z0-9.+~] in an upstream version without a
	# revision; a hyphen in a tag (1.0-rc1) becomes a tilde (sorts before),
	# anything else not allowed becomes a dot.
	v=$(printf '%s' "$v" | tr -- '-' '~' | tr -c 'A-Za-z0-9.+~' '.')
else
	v=0~dev
fi
printf '%s%s\n' "$v" "$dirty"
