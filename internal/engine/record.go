package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/store"
)

// Each VM's directory holds a copy of its record (vm.json), written at
// each start (a VM never started has nothing on the host to account for). The store is the authority; the copy exists so
// that a lost or emptied banger.db can be rebuilt (bangerd --recover) instead
// of leaving VMs, their disks and their VMMs unaccounted for.

func recordPath(vm model.VMRecord) string { return filepath.Join(vm.Runtime.VMDir, "vm.json") }

func writeRecordFile(vm model.VMRecord) error {
	if err := os.MkdirAll(vm.Runtime.VMDir, 0o750); err != nil {
		return err
	}
	b, err := json.MarshalIndent(vm, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(recordPath(vm), append(b, '\n'), 0o600)
}

var vmIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// StateDirFindings is what a state directory holds that only a store can
// account for.
type StateDirFindings struct {
	VMDirs []string // VM directories (named by a VM id)
}

// InspectStateDir lists the VM directories under cfg's state dir.
func InspectStateDir(cfg config.Config) (StateDirFindings, error) {
	var f StateDirFindings
	ents, err := os.ReadDir(filepath.Join(cfg.StateDir, "vms"))
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, err
	}
	for _, e := range ents {
		if e.IsDir() && vmIDPattern.MatchString(e.Name()) {
			f.VMDirs = append(f.VMDirs, e.Name())
		}
	}
	return f, nil
}

// Recover rebuilds the store's VM records from the copies in the VM
// directories, for VMs the store does not have. A VM with a scratch file
// naming a process is recorded running, so that startup reconcile proves
// and keeps a live one (or tears down a dead one); the others are recorded
// stopped. It returns the names recovered and the directories it could not
// read.
func Recover(ctx context.Context, cfg config.Config, st *store.Store) (recovered []string, unreadable []string, err error) {
	f, err := InspectStateDir(cfg)
	if err != nil {
		return nil, nil, err
	}
	for _, id := range f.VMDirs {
		dir := VMDir(cfg, id)
		b, err := os.ReadFile(filepath.Join(dir, "vm.json"))
		var vm model.VMRecord
		if err == nil {
			err = json.Unmarshal(b, &vm)
		}
		if err == nil && (vm.ID != id || vm.Runtime.VMDir != dir) {
			err = fmt.Errorf("record names vm %s in %s", vm.ID, vm.Runtime.VMDir)
		}
		if err != nil {
			unreadable = append(unreadable, fmt.Sprintf("%s: %v", dir, err))
			continue
		}
		if _, err := st.GetVMByID(ctx, id); err == nil {
			continue
		}
		vm.Runtime.State = model.StateStopped
		if h, err := readHandlesFile(handlesPath(vm)); err == nil && h.PID != 0 {
			vm.Runtime.State = model.StateRunning
		}
		vm.Runtime.LastError = "recovered from its directory by bangerd --recover"
		if err := st.CreateVM(ctx, vm); err != nil {
			unreadable = append(unreadable, fmt.Sprintf("%s: %v", dir, err))
			continue
		}
		recovered = append(recovered, vm.Name)
	}
	return recovered, unreadable, nil
}
