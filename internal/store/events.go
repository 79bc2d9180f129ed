package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// AppendEvents stores events (their Seq set by the caller, increasing) in
// one transaction, then trims the log to its newest keep entries.
func (s *Store) AppendEvents(ctx context.Context, evs []model.Event, keep int) error {
	if len(evs) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO events(seq, time, kind, vm_id, vm_name, cause, took_ms) VALUES (?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, ev := range evs {
			if _, err := st.ExecContext(ctx, ev.Seq, ev.Time.UnixNano(), ev.Kind, ev.VMID, ev.VMName, ev.Cause, ev.TookMillis); err != nil {
				return err
			}
		}
		if keep > 0 {
			_, err = tx.ExecContext(ctx, `DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?`, keep)
		}
		return err
	})
}

// ListEvents returns the stored events after seq after, oldest first; with
// vmName, only that VM's.
func (s *Store) ListEvents(ctx context.Context, vmName string, after int64) ([]model.Event, error) {
	q := `SELECT seq, time, kind, vm_id, vm_name, cause, took_ms FROM events WHERE seq > ?`
	args := []any{after}
	if vmName != "" {
		q += ` AND vm_name = ?`
		args = append(args, vmName)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY seq`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []model.Event{}
	for rows.Next() {
		var ev model.Event
		var t int64
		if err := rows.Scan(&ev.Seq, &t, &ev.Kind, &ev.VMID, &ev.VMName, &ev.Cause, &ev.TookMillis); err != nil {
			return nil, err
		}
		ev.Time = time.Unix(0, t).UTC()
		out = append(out, ev)
	}
	return out, rows.Err()
}

// LastEventSeq is the highest stored event sequence number (0 when none).
func (s *Store) LastEventSeq(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM events`).Scan(&n)
	return n, err
}
