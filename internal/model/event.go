package model

import "time"

// Event is one entry of the daemon's event log: something that happened to
// a VM (or, for gc, to a host object), when, and why.
type Event struct {
	Seq    int64     `json:"seq"` // increasing, in the order the daemon saw the events
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // created, started, stopped, ttl-expired, ...
	VMID   string    `json:"vm_id,omitempty"`
	VMName string    `json:"vm,omitempty"`
	Cause  string    `json:"cause,omitempty"` // why, in a few words
	// TookMillis is how long the operation took, for those that take time
	// (start, stop, delete).
	TookMillis int64 `json:"took_ms,omitempty"`
}
