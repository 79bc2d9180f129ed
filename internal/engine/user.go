package engine

import (
	"context"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/oci"
)

// GuestCommand is a command for a guest: what vm run, exec, ssh and
// sessions ask for.
type GuestCommand struct {
	Argv []string
	// User runs it as this user (a name or uid in the guest's /etc/passwd);
	// "": the image's USER for an image made from a container image, else
	// root (commands arrive over SSH as root).
	User string
	// Login: with no Argv, a login shell (a terminal), never the image's
	// ENTRYPOINT and CMD.
	Login bool
}

// ValidUser checks a --user value before anything reaches the guest.
func ValidUser(u string) error {
	if err := model.ValidateUser(u); err != nil {
		return errdefs.Invalid("%w", err)
	}
	return nil
}

// GuestArgv is the argv to run in vm's guest for c, or nil for a bare login
// shell. An image made from a container image runs commands through
// /.banger/run (its ENV, WORKDIR and USER; with no command, its ENTRYPOINT
// and CMD); another image runs them as root, or through switchUserScript
// as c.User.
func (e *Engine) GuestArgv(ctx context.Context, vm model.VMRecord, c GuestCommand) ([]string, error) {
	if err := ValidUser(c.User); err != nil {
		return nil, err
	}
	im, err := e.store.GetImage(ctx, vm.Image)
	return guestArgv(err == nil && imageOCI(im) != nil, c), nil
}

// guestArgv is GuestArgv once the image's kind is known; c.User is valid.
func guestArgv(ociImage bool, c GuestCommand) []string {
	if ociImage {
		switch {
		case len(c.Argv) == 0 && c.Login && c.User == "":
			return nil // root's login shell, as SSH gives it
		case len(c.Argv) == 0 && c.Login:
			return []string{oci.RunHelper, "--user", c.User, "--login"}
		}
		argv := []string{oci.RunHelper}
		if c.User != "" {
			argv = append(argv, "--user", c.User)
		}
		if len(c.Argv) == 0 {
			return argv // ENTRYPOINT + CMD
		}
		return append(append(argv, "--"), c.Argv...)
	}
	if c.User == "" || c.User == "root" || c.User == "0" {
		return c.Argv
	}
	switch {
	case len(c.Argv) > 0:
		return append([]string{"sh", "-c", switchUserScript, "banger-user", c.User, "--"}, c.Argv...)
	case c.Login:
		return []string{"sh", "-c", switchUserScript, "banger-user", c.User, "--login"}
	}
	return nil // no command: the caller refuses it
}

// switchUserScript runs "$3..." (or with --login the user's login shell) as
// user $1, in an image banger did not make from a container image: the
// minimal image has busybox's start-stop-daemon, Debian dpkg's, and both
// switch uid, gid and supplementary groups with -c and exec in the
// foreground when given no -b. An unknown user is refused in the guest with
// exit code 126 before anything runs. A command nothing gave a directory
// (SSH starts it in root's home) starts in the user's home.
const switchUserScript = `u=$1 mode=$2
shift 2
entry=$(awk -F: -v u="$u" '$1 == u || $3 == u { print; exit }' /etc/passwd 2>/dev/null)
if [ -z "$entry" ]; then
	echo "banger: no user \"$u\" in the guest's /etc/passwd" >&2
	exit 126
fi
IFS=: read -r name _ _ _ _ home shell <<EOF
$entry
EOF
if [ "$PWD" = "${HOME:-/root}" ]; then
	cd "${home:-/}" 2>/dev/null || cd /
fi
export HOME="${home:-/}" USER="$name" LOGNAME="$name"
if [ "$mode" = --login ]; then
	[ -n "$shell" ] && [ -x "$shell" ] || shell=/bin/sh
	set -- "$shell" -l
fi
# start-stop-daemon execs a path: look the command up on PATH (command -v
# would name a shell builtin).
prog=$1
case "$prog" in
*/*) ;;
*)
	found=
	IFS=:
	for d in $PATH; do
		if [ -f "$d/$prog" ] && [ -x "$d/$prog" ]; then
			found=$d/$prog
			break
		fi
	done
	unset IFS
	if [ -z "$found" ]; then
		echo "banger: $prog: command not found" >&2
		exit 127
	fi
	prog=$found
	;;
esac
shift
ssd=$(command -v start-stop-daemon || command -v /sbin/start-stop-daemon) || {
	echo "banger: the guest has no start-stop-daemon to switch to user \"$name\"" >&2
	exit 126
}
exec "$ssd" -S -p /dev/null -c "$name" -x "$prog" -- "$@"
`
