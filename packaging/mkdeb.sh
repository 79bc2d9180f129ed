#!/bin/sh
# mkdeb.sh STAGE VERSION ARCH OUT: turns a tree staged by
# `make install DESTDIR=STAGE PREFIX=/usr` into the Debian package OUT,
# with dpkg-deb alone (no debhelper). MAINTAINER and COMPRESS (dpkg-deb's
# compressor, default xz) may be set in the environment.
set -eu
if [ $# -ne 4 ]; then
	echo "usage: $0 STAGE VERSION ARCH OUT" >&2
	exit 2
fi
stage=$1 version=$2 arch=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
maintainer=${MAINTAINER:-banger developers <banger-dev@users.noreply.github.com>}

if ! expr "$version" : '[0-9][A-Za-z0-9.+~]*$' >/dev/null; then
	echo "mkdeb: $version is not a Debian version" >&2
	exit 1
fi
for f in usr/bin/banger usr/bin/bangerd usr/lib/systemd/system/bangerd.service; do
	if [ ! -f "$stage/$f" ]; then
		echo "mkdeb: $stage/$f is missing: stage with make install DESTDIR=$stage PREFIX=/usr" >&2
		exit 1
	fi
done

# Go binaries built with cgo link libc: depend on the newest GLIBC_ symbol
# version they use (plain libc6 when readelf cannot tell).
depends="qemu-system-x86, e2fsprogs, iproute2, util-linux"
libc=
for b in "$stage"/usr/bin/*; do
	if ! command -v readelf >/dev/null 2>&1; then
		libc=${libc:-any}
	elif readelf -d "$b" 2>/dev/null | grep -q 'NEEDED.*libc\.so\.6'; then
		v=$(readelf -V "$b" | sed -n 's/.*GLIBC_\([0-9][0-9.]*\).*/\1/p')
		libc=$(printf '%s\n' "$libc" $v | grep -v -e '^$' -e '^any$' | sort -V | tail -n 1)
		libc=${libc:-any}
	fi
done
case $libc in
"") ;;
any) depends="libc6, $depends" ;;
*) depends="libc6 (>= $libc), $depends" ;;
esac

rm -rf "$stage/DEBIAN"
mkdir -p "$stage/DEBIAN"
size=$(du -sk "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
	-e "s|@SIZE@|$size|" -e "s|@DEPENDS@|$depends|" "$here/debian/control.in" >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control"
for s in postinst prerm postrm; do
	install -m 0755 "$here/debian/$s" "$stage/DEBIAN/$s"
done
# Files under /etc are conffiles: dpkg keeps an admin's changes.
if [ -d "$stage/etc" ]; then
	(cd "$stage" && find etc -type f | sort | sed 's|^|/|') >"$stage/DEBIAN/conffiles"
	chmod 0644 "$stage/DEBIAN/conffiles"
fi
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"

mkdir -p "$(dirname "$out")"
dpkg-deb --root-owner-group -Z"${COMPRESS:-xz}" --build "$stage" "$out" >/dev/null
echo "$out"
