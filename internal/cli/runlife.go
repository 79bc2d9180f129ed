package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/units"
)

// vm run's first use and cleanup: like docker run, it builds the default
// image when the host has none, and a run that fails before its command
// ran leaves nothing behind.

// needsDefaultImage reports whether vm run must build the default image
// before it can create its VM: there is no default image, and the VM asks
// for none or for a container image (made with the default image's
// kernel). A plain image name that does not exist is an error of its own,
// not a reason to build.
func needsDefaultImage(ims []client.Image, image string) bool {
	for _, im := range ims {
		if im.Default || (image != "" && im.Name == image) {
			return false
		}
	}
	return image == "" || looksLikeImageRef(image)
}

// ensureDefaultImage builds the default image, with its progress on
// stderr, when vm run needs one (needsDefaultImage).
func (a *app) ensureDefaultImage(c *client.Client, image string) error {
	ims, err := c.ListImages(a.ctx)
	if err != nil {
		return err
	}
	if !needsDefaultImage(ims, image) {
		return nil
	}
	fmt.Fprintln(a.stderr, "banger: no default image on this host: building it first (banger image build)")
	err = c.BuildImage(a.ctx, client.BuildImageRequest{}, func(line string) { fmt.Fprintln(a.stderr, line) })
	if client.IsAlreadyExists(err) {
		return nil // built meanwhile by another run
	}
	if err != nil {
		return fmt.Errorf("building the default image: %w", err)
	}
	return nil
}

// runPlan is what vm run knows of its VM when it ends.
type runPlan struct {
	created    bool // this run created the VM
	named      bool // --name was given
	keep, rm   bool // --keep, --rm
	wasRunning bool // the VM ran before this run
}

// runCleanup is what vm run does to its VM at the end.
type runCleanup string

const (
	cleanupNone   runCleanup = ""
	cleanupDelete runCleanup = "delete"
	cleanupStop   runCleanup = "stop"
)

// cleanupAfterRun decides. A run that failed before its command ran
// deletes the VM it created and stops one it started (an existing VM is
// left as it was); after the command, the VM is deleted with --rm, or when
// this run created it without a name and without --keep.
func cleanupAfterRun(p runPlan, commandRan bool) runCleanup {
	switch {
	case !commandRan && p.created:
		return cleanupDelete
	case !commandRan && !p.wasRunning:
		return cleanupStop
	case !commandRan:
		return cleanupNone
	case p.rm:
		return cleanupDelete
	case p.created && !p.named && !p.keep:
		return cleanupDelete
	}
	return cleanupNone
}

// cleanupRun applies cleanupAfterRun to vm name, also after Ctrl-C.
func (a *app) cleanupRun(c *client.Client, name string, p runPlan, commandRan bool) {
	what := cleanupAfterRun(p, commandRan)
	if what == cleanupNone {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 2*time.Minute)
	defer cancel()
	var err error
	switch what {
	case cleanupDelete:
		err = c.DeleteVM(ctx, name, true)
		if client.IsNotFound(err) {
			err = nil
		}
	case cleanupStop:
		_, err = c.StopVM(ctx, name, client.StopRequest{Force: true})
	}
	if err != nil {
		fmt.Fprintf(a.stderr, "banger: %s vm %s after the run: %v\n", map[runCleanup]string{cleanupDelete: "removing", cleanupStop: "stopping"}[what], name, err)
	}
}

// minIdleTimeout mirrors the daemon's shortest idle timeout (shorter than
// a boot), so vm run refuses it before building or creating anything.
const minIdleTimeout = 30 * time.Second

// lifetime reads --ttl, --ttl-action and --idle-timeout into req. The
// daemon checks them again, against its max_ttl too.
func (f *createFlags) lifetime(req *client.CreateVMRequest) error {
	seconds := func(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }
	if f.ttl != "" || f.changed("ttl") {
		d, err := units.ParseDuration(f.ttl)
		if err != nil {
			return usageError{fmt.Errorf("invalid --ttl: %w", err)}
		}
		if d <= 0 {
			return usageError{fmt.Errorf("invalid --ttl %s: want a positive duration such as 30m, 12h or 7d", f.ttl)}
		}
		req.TTLSeconds = seconds(d)
	}
	switch a := client.TTLAction(f.ttlAction); a {
	case "":
	case client.TTLDelete, client.TTLStop, client.TTLSuspend:
		if req.TTLSeconds == 0 {
			return usageError{fmt.Errorf("--ttl-action %s needs --ttl", a)}
		}
		req.TTLAction = string(a)
	default:
		return usageError{fmt.Errorf("invalid --ttl-action %q: want delete, stop or suspend", f.ttlAction)}
	}
	if f.idleTimeout != "" || f.changed("idle-timeout") {
		d, err := units.ParseDuration(f.idleTimeout)
		if err != nil {
			return usageError{fmt.Errorf("invalid --idle-timeout: %w", err)}
		}
		if d < minIdleTimeout {
			return usageError{fmt.Errorf("invalid --idle-timeout %s: shorter than a boot; want at least %s", f.idleTimeout, minIdleTimeout)}
		}
		req.IdleTimeoutSeconds = seconds(d)
	}
	return nil
}

func (f *createFlags) changed(name string) bool { return f.flags != nil && f.flags.Changed(name) }

// checkMaxTTL refuses, before anything is built or created, a lifetime
// beyond max_ttl as this host's configuration sets it (the daemon, which
// reads the same configuration, checks again).
func (a *app) checkMaxTTL(req client.CreateVMRequest) error {
	if a.cfg.MaxTTL == "" {
		return nil
	}
	max, err := units.ParseDuration(a.cfg.MaxTTL)
	if err != nil || max <= 0 {
		return nil // the daemon reports a bad max_ttl
	}
	for _, c := range []struct {
		flag string
		secs int64
	}{{"--ttl", req.TTLSeconds}, {"--idle-timeout", req.IdleTimeoutSeconds}} {
		if d := time.Duration(c.secs) * time.Second; d > max {
			return usageError{fmt.Errorf("invalid %s %s: beyond max_ttl %s", c.flag, d, a.cfg.MaxTTL)}
		}
	}
	return nil
}
