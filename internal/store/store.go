// Package store keeps what banger's VMs and images ARE in one SQLite file
// (modernc.org/sqlite, no cgo): WAL, synchronous=FULL so an acknowledged
// write survives kill -9 and power loss, foreign keys, numbered migrations.
// VMHandles never reach it.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"

	"modernc.org/sqlite" // driver "sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Typed store errors; callers use errors.Is. They are errdefs kinds, so a
// store error keeps its kind through every layer above.
var (
	ErrNotFound = errdefs.ErrNotFound
	ErrExists   = errdefs.ErrAlreadyExists
	ErrInUse    = fmt.Errorf("in use: %w", errdefs.ErrConflict)
)

// Store is banger's SQLite database.
type Store struct {
	db *sql.DB
}

// migrations are applied in order; each runs once, recorded in schema_migrations.
var migrations = []string{
	// 1: vms and images
	`CREATE TABLE images (
		name TEXT PRIMARY KEY,
		kernel_path TEXT NOT NULL,
		vmlinux_path TEXT NOT NULL DEFAULT '',
		initrd_path TEXT NOT NULL DEFAULT '',
		rootfs_path TEXT NOT NULL,
		boot_args TEXT NOT NULL DEFAULT '',
		is_default INTEGER NOT NULL DEFAULT 0,
		created_at INTEGER NOT NULL
	);
	CREATE TABLE vms (
		id TEXT PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		image TEXT NOT NULL DEFAULT '',
		vcpus INTEGER NOT NULL,
		memory_mib INTEGER NOT NULL,
		disk_size INTEGER NOT NULL,
		work_disk_size INTEGER NOT NULL,
		state TEXT NOT NULL,
		vmm TEXT NOT NULL DEFAULT '',
		accel TEXT NOT NULL DEFAULT '',
		root_disk_method TEXT NOT NULL DEFAULT '',
		guest_ip TEXT UNIQUE,
		guest_mac TEXT NOT NULL DEFAULT '',
		api_sock_path TEXT NOT NULL DEFAULT '',
		vsock_path TEXT NOT NULL DEFAULT '',
		vsock_cid INTEGER UNIQUE,
		log_path TEXT NOT NULL DEFAULT '',
		metrics_path TEXT NOT NULL DEFAULT '',
		dns_name TEXT NOT NULL DEFAULT '',
		vm_dir TEXT NOT NULL DEFAULT '',
		system_overlay TEXT NOT NULL DEFAULT '',
		work_disk_path TEXT NOT NULL DEFAULT '',
		last_error TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE INDEX vms_image ON vms(image);`,
	// 2: guest sessions
	`CREATE TABLE sessions (
		id TEXT PRIMARY KEY,
		vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		name TEXT NOT NULL,
		command TEXT NOT NULL,
		cwd TEXT NOT NULL DEFAULT '',
		env TEXT NOT NULL DEFAULT '[]',
		stdin INTEGER NOT NULL DEFAULT 0,
		status TEXT NOT NULL,
		exit_code INTEGER,
		started_at INTEGER NOT NULL,
		ended_at INTEGER,
		stdout_path TEXT NOT NULL,
		stderr_path TEXT NOT NULL,
		UNIQUE(vm_id, name)
	);`,
	// 3: port forwards
	`CREATE TABLE ports (
		vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		spec TEXT NOT NULL,
		host_key TEXT NOT NULL UNIQUE,
		PRIMARY KEY (vm_id, spec)
	);`,
	// 4: ListVMs reads rows in index order instead of sorting every row
	// (with thousands of VMs the sort spilled to temp files).
	`CREATE INDEX vms_created ON vms(created_at, name);`,
	// 5: confinement (each VM's own uid) and per-VM options (JSON).
	`ALTER TABLE vms ADD COLUMN uid INTEGER;
	ALTER TABLE vms ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
	CREATE UNIQUE INDEX vms_uid ON vms(uid);`,
	// 6: the event log (bounded: trimmed to the newest entries on insert).
	`CREATE TABLE events (
		seq INTEGER PRIMARY KEY,
		time INTEGER NOT NULL,
		kind TEXT NOT NULL,
		vm_id TEXT NOT NULL DEFAULT '',
		vm_name TEXT NOT NULL DEFAULT '',
		cause TEXT NOT NULL DEFAULT '',
		took_ms INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX events_vm_name ON events(vm_name, seq);`,
	// 7: warm pools (their members are VMs whose options name the pool).
	`CREATE TABLE pools (
		name TEXT PRIMARY KEY,
		snapshot TEXT NOT NULL,
		size INTEGER NOT NULL,
		created_at INTEGER NOT NULL
	);`,
}

// Open opens (creating if needed) the database at path and applies migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// One writer at a time is SQLite's model; a small pool serves readers.
	db.SetMaxOpenConns(4)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate store %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// SchemaVersion returns the number of applied migrations.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version),0) FROM schema_migrations`).Scan(&n)
	return n, err
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	for i, m := range migrations {
		version := i + 1
		err := s.tx(ctx, func(tx *sql.Tx) error {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m); err != nil {
				return fmt.Errorf("migration %d: %w", version, err)
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, version, time.Now().Unix())
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return classify(tx.Commit())
}

// isUnique reports a UNIQUE constraint violation, by SQLite's extended
// result code rather than its message.
func isUnique(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
}

// classify gives a write error the no-space kind when the disk is full, so
// callers can tell "retry once space is freed" from a broken database.
func classify(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && (se.Code()&0xff == sqlite3.SQLITE_FULL) || errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: %w", errdefs.ErrNoSpace, err)
	}
	return err
}

const vmColumns = `id, name, image, vcpus, memory_mib, disk_size, work_disk_size, state, vmm, accel, root_disk_method,
	guest_ip, guest_mac, api_sock_path, vsock_path, vsock_cid, log_path, metrics_path, dns_name, vm_dir, system_overlay,
	work_disk_path, last_error, created_at, updated_at, uid, options`

func nullStr(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullCID(c uint32) any {
	if c == 0 {
		return nil
	}
	return int64(c)
}

func vmArgs(vm *model.VMRecord) []any {
	r := &vm.Runtime
	return []any{vm.ID, vm.Name, vm.Image, vm.Spec.VCPUs, vm.Spec.MemoryMiB, vm.Spec.DiskSizeBytes, vm.Spec.WorkDiskBytes,
		string(r.State), r.VMM, r.Accel, r.RootDiskMethod, nullStr(r.GuestIP), r.GuestMAC, r.APISockPath, r.VSockPath,
		nullCID(r.VSockCID), r.LogPath, r.MetricsPath, r.DNSName, r.VMDir, r.SystemOverlay, r.WorkDiskPath, r.LastError,
		vm.CreatedAt.UnixNano(), vm.UpdatedAt.UnixNano(), nullUID(r.UID), optionsJSON(vm.Spec.Options)}
}

func nullUID(uid int) any {
	if uid == 0 {
		return nil
	}
	return uid
}

func optionsJSON(o model.VMOptions) string {
	b, err := json.Marshal(o)
	if err != nil {
		return "{}"
	}
	return string(b)
}

type scanner interface{ Scan(...any) error }

func scanVM(sc scanner) (model.VMRecord, error) {
	var vm model.VMRecord
	var state string
	var ip sql.NullString
	var cid sql.NullInt64
	var created, updated int64
	var uid sql.NullInt64
	var options string
	r := &vm.Runtime
	err := sc.Scan(&vm.ID, &vm.Name, &vm.Image, &vm.Spec.VCPUs, &vm.Spec.MemoryMiB, &vm.Spec.DiskSizeBytes, &vm.Spec.WorkDiskBytes,
		&state, &r.VMM, &r.Accel, &r.RootDiskMethod, &ip, &r.GuestMAC, &r.APISockPath, &r.VSockPath, &cid, &r.LogPath,
		&r.MetricsPath, &r.DNSName, &r.VMDir, &r.SystemOverlay, &r.WorkDiskPath, &r.LastError, &created, &updated, &uid, &options)
	if err != nil {
		return vm, err
	}
	r.UID = int(uid.Int64)
	if err := json.Unmarshal([]byte(options), &vm.Spec.Options); err != nil {
		return vm, fmt.Errorf("vm %s: options: %w", vm.ID, err)
	}
	r.State = model.VMState(state)
	r.GuestIP = ip.String
	r.VSockCID = uint32(cid.Int64)
	vm.CreatedAt = time.Unix(0, created).UTC()
	vm.UpdatedAt = time.Unix(0, updated).UTC()
	return vm, nil
}

// CreateVM inserts a VM. A duplicate name, IP or CID is ErrExists.
func (s *Store) CreateVM(ctx context.Context, vm model.VMRecord) error {
	q := `INSERT INTO vms (` + vmColumns + `) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`
	if _, err := s.db.ExecContext(ctx, q, vmArgs(&vm)...); err != nil {
		if isUnique(err) {
			if strings.Contains(err.Error(), "vms.name") {
				return fmt.Errorf("vm %q: %w", vm.Name, ErrExists)
			}
			return fmt.Errorf("vm %q: address or vsock cid taken: %w", vm.Name, ErrExists)
		}
		return fmt.Errorf("insert vm %q: %w", vm.Name, classify(err))
	}
	return nil
}

// UpdateVM writes every column of vm (matched by id) and bumps updated_at.
func (s *Store) UpdateVM(ctx context.Context, vm *model.VMRecord) error {
	vm.UpdatedAt = time.Now().UTC()
	args := vmArgs(vm)
	q := `UPDATE vms SET name=?, image=?, vcpus=?, memory_mib=?, disk_size=?, work_disk_size=?, state=?, vmm=?, accel=?,
		root_disk_method=?, guest_ip=?, guest_mac=?, api_sock_path=?, vsock_path=?, vsock_cid=?, log_path=?, metrics_path=?,
		dns_name=?, vm_dir=?, system_overlay=?, work_disk_path=?, last_error=?, created_at=?, updated_at=?, uid=?, options=? WHERE id=?`
	res, err := s.db.ExecContext(ctx, q, append(args[1:], args[0])...)
	if err != nil {
		return fmt.Errorf("update vm %q: %w", vm.Name, classify(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", vm.Name, ErrNotFound)
	}
	return nil
}

// GetVM finds a VM by name.
func (s *Store) GetVM(ctx context.Context, name string) (model.VMRecord, error) {
	vm, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return vm, fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return vm, err
}

// GetVMByID finds a VM by id.
func (s *Store) GetVMByID(ctx context.Context, id string) (model.VMRecord, error) {
	vm, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return vm, fmt.Errorf("vm id %s: %w", id, ErrNotFound)
	}
	return vm, err
}

// ListVMs returns every VM ordered by creation.
func (s *Store) ListVMs(ctx context.Context) ([]model.VMRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created_at, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.VMRecord
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	return out, rows.Err()
}

// DeleteVM removes a VM row (and its sessions and ports). Absent is success.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	return err
}

// UsedAddresses returns every guest IP and vsock CID in use. Each comes
// from its column's unique index alone (a covering index scan), not from
// the table rows: with thousands of VMs that is most of a create's time.
func (s *Store) UsedAddresses(ctx context.Context) (ips []string, cids []uint32, err error) {
	rows, err := s.db.QueryContext(ctx, `SELECT guest_ip FROM vms WHERE guest_ip IS NOT NULL`)
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			rows.Close()
			return nil, nil, err
		}
		if ip != "" {
			ips = append(ips, ip)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	rows, err = s.db.QueryContext(ctx, `SELECT vsock_cid FROM vms WHERE vsock_cid IS NOT NULL`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var cid int64
		if err := rows.Scan(&cid); err != nil {
			return nil, nil, err
		}
		if cid != 0 {
			cids = append(cids, uint32(cid))
		}
	}
	return ips, cids, rows.Err()
}

const imageColumns = `name, kernel_path, vmlinux_path, initrd_path, rootfs_path, boot_args, is_default, created_at`

func scanImage(sc scanner) (model.Image, error) {
	var im model.Image
	var def int
	var created int64
	err := sc.Scan(&im.Name, &im.KernelPath, &im.VMLinux, &im.InitrdPath, &im.RootfsPath, &im.BootArgs, &def, &created)
	im.Default = def != 0
	im.CreatedAt = time.Unix(0, created).UTC()
	return im, err
}

// CreateImage inserts an image; the first image becomes the default.
func (s *Store) CreateImage(ctx context.Context, im model.Image) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM images WHERE is_default = 1`).Scan(&n); err != nil {
			return err
		}
		def := 0
		if n == 0 || im.Default {
			def = 1
			if _, err := tx.ExecContext(ctx, `UPDATE images SET is_default = 0`); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`) VALUES (?,?,?,?,?,?,?,?)`,
			im.Name, im.KernelPath, im.VMLinux, im.InitrdPath, im.RootfsPath, im.BootArgs, def, im.CreatedAt.UnixNano())
		if isUnique(err) {
			return fmt.Errorf("image %q: %w", im.Name, ErrExists)
		}
		return err
	})
}

// GetImage finds an image by name; "" finds the default image.
func (s *Store) GetImage(ctx context.Context, name string) (model.Image, error) {
	var row *sql.Row
	if name == "" {
		row = s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE is_default = 1`)
	} else {
		row = s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE name = ?`, name)
	}
	im, err := scanImage(row)
	if errors.Is(err, sql.ErrNoRows) {
		if name == "" {
			return im, fmt.Errorf("default image: %w", ErrNotFound)
		}
		return im, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return im, err
}

// ListImages returns every image.
func (s *Store) ListImages(ctx context.Context) ([]model.Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY created_at, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.Image
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

// DeleteImage removes an image; ErrInUse while a VM uses it. When the
// default goes, the oldest remaining image becomes the default.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var users []string
		rows, err := tx.QueryContext(ctx, `SELECT name FROM vms WHERE image = ? ORDER BY name`, name)
		if err != nil {
			return err
		}
		for rows.Next() {
			var n string
			rows.Scan(&n)
			users = append(users, n)
		}
		rows.Close()
		if len(users) > 0 {
			return fmt.Errorf("image %q is used by vm %s: %w", name, strings.Join(users, ", "), ErrInUse)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM images WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("image %q: %w", name, ErrNotFound)
		}
		_, err = tx.ExecContext(ctx, `UPDATE images SET is_default = 1 WHERE name = (SELECT name FROM images ORDER BY created_at, name LIMIT 1)
			AND NOT EXISTS (SELECT 1 FROM images WHERE is_default = 1)`)
		return err
	})
}

// VMsUsingImage names the VMs made from image.
func (s *Store) VMsUsingImage(ctx context.Context, image string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM vms WHERE image = ? ORDER BY name`, image)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

const sessionColumns = `id, vm_id, name, command, cwd, env, stdin, status, exit_code, started_at, ended_at, stdout_path, stderr_path`

func scanSession(sc scanner) (model.GuestSession, error) {
	var gs model.GuestSession
	var cmd, env, status string
	var stdin int
	var code sql.NullInt64
	var started int64
	var ended sql.NullInt64
	err := sc.Scan(&gs.ID, &gs.VMID, &gs.Name, &cmd, &gs.Cwd, &env, &stdin, &status, &code, &started, &ended, &gs.StdoutPath, &gs.StderrPath)
	if err != nil {
		return gs, err
	}
	json.Unmarshal([]byte(cmd), &gs.Command)
	json.Unmarshal([]byte(env), &gs.Env)
	gs.Stdin = stdin != 0
	gs.Status = model.SessionStatus(status)
	if code.Valid {
		c := int(code.Int64)
		gs.ExitCode = &c
	}
	gs.StartedAt = time.Unix(0, started).UTC()
	if ended.Valid {
		t := time.Unix(0, ended.Int64).UTC()
		gs.EndedAt = &t
	}
	return gs, nil
}

func sessionArgs(gs *model.GuestSession) []any {
	cmd, _ := json.Marshal(gs.Command)
	env, _ := json.Marshal(gs.Env)
	if gs.Env == nil {
		env = []byte("[]")
	}
	stdin := 0
	if gs.Stdin {
		stdin = 1
	}
	var code, ended any
	if gs.ExitCode != nil {
		code = *gs.ExitCode
	}
	if gs.EndedAt != nil {
		ended = gs.EndedAt.UnixNano()
	}
	return []any{gs.ID, gs.VMID, gs.Name, string(cmd), gs.Cwd, string(env), stdin, string(gs.Status), code,
		gs.StartedAt.UnixNano(), ended, gs.StdoutPath, gs.StderrPath}
}

// CreateSession inserts a session; a name already used on the VM is ErrExists.
func (s *Store) CreateSession(ctx context.Context, gs model.GuestSession) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO sessions (`+sessionColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`, sessionArgs(&gs)...)
	if isUnique(err) {
		return fmt.Errorf("session %q: %w", gs.Name, ErrExists)
	}
	return err
}

// UpdateSession writes status, exit code and end time.
func (s *Store) UpdateSession(ctx context.Context, gs model.GuestSession) error {
	a := sessionArgs(&gs)
	_, err := s.db.ExecContext(ctx, `UPDATE sessions SET status=?, exit_code=?, ended_at=? WHERE id=?`, a[7], a[8], a[10], gs.ID)
	return err
}

// DeleteSession removes a session row.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE id=?`, id)
	return err
}

// ListSessions returns a VM's sessions.
func (s *Store) ListSessions(ctx context.Context, vmID string) ([]model.GuestSession, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE vm_id = ? ORDER BY started_at, name`, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.GuestSession
	for rows.Next() {
		gs, err := scanSession(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, gs)
	}
	return out, rows.Err()
}

// GetSession finds a VM's session by name or id.
func (s *Store) GetSession(ctx context.Context, vmID, nameOrID string) (model.GuestSession, error) {
	gs, err := scanSession(s.db.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE vm_id = ? AND (name = ? OR id = ?)`, vmID, nameOrID, nameOrID))
	if errors.Is(err, sql.ErrNoRows) {
		return gs, fmt.Errorf("session %q: %w", nameOrID, ErrNotFound)
	}
	return gs, err
}

// Port is a stored port forward.
type Port struct {
	VMID    string
	Spec    string
	HostKey string // host addr:port/proto, unique across VMs
}

// AddPort records a forward; a host key already used is ErrExists.
func (s *Store) AddPort(ctx context.Context, p Port) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO ports(vm_id, spec, host_key) VALUES (?,?,?)`, p.VMID, p.Spec, p.HostKey)
	if isUnique(err) {
		return fmt.Errorf("host port %s: %w", p.HostKey, ErrExists)
	}
	return err
}

// RemovePort deletes a forward; absent is ErrNotFound.
func (s *Store) RemovePort(ctx context.Context, vmID, spec string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM ports WHERE vm_id = ? AND spec = ?`, vmID, spec)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("port %s: %w", spec, ErrNotFound)
	}
	return nil
}

// ListPorts returns the forwards of a VM, or of every VM when vmID is "".
func (s *Store) ListPorts(ctx context.Context, vmID string) ([]Port, error) {
	q := `SELECT vm_id, spec, host_key FROM ports`
	var args []any
	if vmID != "" {
		q += ` WHERE vm_id = ?`
		args = append(args, vmID)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY host_key`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Port
	for rows.Next() {
		var p Port
		if err := rows.Scan(&p.VMID, &p.Spec, &p.HostKey); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// UsedUIDs returns every VM uid in use (from the uid column's index).
func (s *Store) UsedUIDs(ctx context.Context) ([]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT uid FROM vms WHERE uid IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var uid int
		if err := rows.Scan(&uid); err != nil {
			return nil, err
		}
		out = append(out, uid)
	}
	return out, rows.Err()
}

// CreatePool records a warm pool; a name taken is ErrExists.
func (s *Store) CreatePool(ctx context.Context, p model.Pool) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO pools(name, snapshot, size, created_at) VALUES (?,?,?,?)`,
		p.Name, p.Snapshot, p.Size, p.CreatedAt.UnixNano())
	if isUnique(err) {
		return fmt.Errorf("pool %q: %w", p.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("insert pool %q: %w", p.Name, classify(err))
	}
	return nil
}

// GetPool finds a pool by name.
func (s *Store) GetPool(ctx context.Context, name string) (model.Pool, error) {
	var p model.Pool
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT name, snapshot, size, created_at FROM pools WHERE name = ?`, name).
		Scan(&p.Name, &p.Snapshot, &p.Size, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("pool %q: %w", name, ErrNotFound)
	}
	p.CreatedAt = time.Unix(0, created).UTC()
	return p, err
}

// ListPools returns every pool, oldest first.
func (s *Store) ListPools(ctx context.Context) ([]model.Pool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, snapshot, size, created_at FROM pools ORDER BY created_at, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.Pool
	for rows.Next() {
		var p model.Pool
		var created int64
		if err := rows.Scan(&p.Name, &p.Snapshot, &p.Size, &created); err != nil {
			return nil, err
		}
		p.CreatedAt = time.Unix(0, created).UTC()
		out = append(out, p)
	}
	return out, rows.Err()
}

// DeletePool removes a pool's row; absent is ErrNotFound.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM pools WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("pool %q: %w", name, ErrNotFound)
	}
	return nil
}
