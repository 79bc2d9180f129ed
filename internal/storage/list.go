package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/system"
)

// ListLoopDevices returns every loop device bound on the host, mapped to its
// backing file as losetup reports it (with " (deleted)" appended when the
// file was removed), so doctor and gc can find devices left behind.
func (m *Manager) ListLoopDevices(ctx context.Context) (map[string]string, error) {
	out, err := m.Runner.Run(ctx, "losetup", "--list", "--json", "-O", "NAME,BACK-FILE")
	if err != nil {
		return nil, fmt.Errorf("listing loop devices: %w", err)
	}
	devs := map[string]string{}
	if len(bytes.TrimSpace(out)) == 0 {
		return devs, nil // older losetup prints nothing when there are none
	}
	var doc struct {
		LoopDevices []struct {
			Name     string  `json:"name"`
			BackFile *string `json:"back-file"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("listing loop devices: parsing losetup output: %w", err)
	}
	for _, d := range doc.LoopDevices {
		back := ""
		if d.BackFile != nil {
			back = *d.BackFile
		}
		devs[d.Name] = back
	}
	return devs, nil
}

// ListDMDevices returns the names of banger's device-mapper devices (those
// starting with "banger-"), sorted as dmsetup lists them. It returns none,
// without error, on a host without device-mapper.
func (m *Manager) ListDMDevices(ctx context.Context) ([]string, error) {
	out, err := m.Runner.Run(ctx, "dmsetup", "ls")
	if err != nil {
		// No dmsetup, or no driver behind /dev/mapper/control.
		if errors.Is(err, system.ErrNoTool) || errors.Is(err, system.ErrNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing dm devices: %w", err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "banger-x\t(253:0)", or "No devices found".
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && strings.HasPrefix(fields[0], dmPrefix) {
			names = append(names, fields[0])
		}
	}
	return names, nil
}

// FindRootHandles asks the kernel what holds vmID's root disk: the dm device
// named for the VM, and the two loop devices its snapshot table uses. It is
// how teardown proves (and finds, when the scratch file is lost) what to
// remove: the dm name is derived from the VM's id, and the loops are the
// ones that dm device is built on. A VM with no dm device gives zero
// handles and no error.
func (m *Manager) FindRootHandles(ctx context.Context, vmID string) (RootHandles, error) {
	name := DMName(vmID)
	out, err := m.Runner.Run(ctx, "dmsetup", "table", name)
	if err != nil {
		if errors.Is(err, system.ErrNoTool) || errors.Is(err, system.ErrNotFound) {
			return RootHandles{}, nil
		}
		return RootHandles{}, fmt.Errorf("reading dm table of %s: %w", name, err)
	}
	// "0 131072 snapshot /dev/loop0 /dev/loop1 P 8"
	f := strings.Fields(strings.TrimSpace(string(out)))
	if len(f) < 5 || f[2] != "snapshot" {
		return RootHandles{}, fmt.Errorf("dm device %s has table %q, not a banger snapshot", name, strings.TrimSpace(string(out)))
	}
	h := RootHandles{DMName: name, DMDev: "/dev/mapper/" + name}
	for i, dev := range f[3:5] {
		// The kernel prints devices as major:minor; loop devices are major 7.
		if maj, min, ok := strings.Cut(dev, ":"); ok {
			n, err := strconv.Atoi(min)
			if maj != "7" || err != nil {
				continue // not a loop: not built by banger; leave it
			}
			dev = fmt.Sprintf("/dev/loop%d", n)
		}
		if !strings.HasPrefix(dev, "/dev/loop") {
			continue
		}
		if i == 0 {
			h.BaseLoop = dev
		} else {
			h.COWLoop = dev
		}
	}
	return h, nil
}
