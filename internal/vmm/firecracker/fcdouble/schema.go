package fcdouble

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// kind is the serde type a body field deserialises into.
type kind int

const (
	kString kind = iota
	kBool
	kU8
	kU16
	kU32
	kU64
	kI32
	kEnum      // string out of a fixed, case-sensitive list
	kEnumFold  // string out of a fixed list, case-insensitive (logger level)
	kObject    // nested struct with its own schema
	kStrings   // array of strings
	kObjects   // array of nested structs
	kAnyObject // any JSON object (cpu-config, mmds)
)

// field describes one member of a request body as Firecracker's serde structs
// declare it: every body is deny_unknown_fields unless schema.lenient.
type field struct {
	name     string
	kind     kind
	required bool
	enum     []string
	sub      *schema
}

type schema struct {
	name    string // Rust struct name, used in serde-style messages
	fields  []field
	lenient bool // accept unknown fields (only /metrics)
}

func (s *schema) lookup(name string) (field, bool) {
	for _, f := range s.fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

func (s *schema) names() string {
	q := make([]string, len(s.fields))
	for i, f := range s.fields {
		q[i] = "`" + f.name + "`"
	}
	return strings.Join(q, ", ")
}

// validate checks body against s the way serde_json would and returns the
// decoded members, or a serde-like message. Keys are visited in document
// order, so the first offending key is the one reported, as serde does.
func (s *schema) validate(body []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	members, err := s.decodeObject(dec)
	if err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing characters")
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("trailing characters")
	}
	return members, nil
}

func (s *schema) decodeObject(dec *json.Decoder) (map[string]json.RawMessage, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("EOF while parsing a value")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("invalid type: %s, expected struct %s", describeToken(tok), s.name)
	}
	members := map[string]json.RawMessage{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("key must be a string")
		}
		key, _ := kt.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("expected value")
		}
		f, known := s.lookup(key)
		if !known {
			if s.lenient {
				continue
			}
			return nil, fmt.Errorf("unknown field `%s`, expected one of %s", key, s.names())
		}
		if _, dup := members[key]; dup {
			return nil, fmt.Errorf("duplicate field `%s`", key)
		}
		if string(raw) == "null" {
			if f.required {
				return nil, fmt.Errorf("invalid type: null, expected %s", expectName(f))
			}
			continue // Option<T>: null is None
		}
		if err := checkValue(f, raw); err != nil {
			return nil, err
		}
		members[key] = raw
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("EOF while parsing an object")
	}
	for _, f := range s.fields {
		if _, ok := members[f.name]; f.required && !ok {
			return nil, fmt.Errorf("missing field `%s`", f.name)
		}
	}
	return members, nil
}

func expectName(f field) string {
	switch f.kind {
	case kString:
		return "a string"
	case kBool:
		return "a boolean"
	case kU8:
		return "u8"
	case kU16:
		return "u16"
	case kU32:
		return "u32"
	case kU64:
		return "u64"
	case kI32:
		return "i32"
	case kEnum, kEnumFold:
		return "variant identifier"
	case kObject:
		return "struct " + f.sub.name
	case kStrings, kObjects:
		return "a sequence"
	default:
		return "a map"
	}
}

func describeRaw(raw json.RawMessage) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return "invalid value"
	}
	return describeToken(tok)
}

func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "map"
		}
		return "sequence"
	case string:
		return fmt.Sprintf("string %q", v)
	case bool:
		return fmt.Sprintf("boolean `%t`", v)
	case json.Number:
		if strings.ContainsAny(string(v), ".eE") {
			return fmt.Sprintf("floating point `%s`", v)
		}
		if strings.HasPrefix(string(v), "-") {
			return fmt.Sprintf("integer `%s`", v)
		}
		return fmt.Sprintf("integer `%s`", v)
	case nil:
		return "null"
	}
	return "value"
}

func checkValue(f field, raw json.RawMessage) error {
	wrongType := func() error {
		return fmt.Errorf("invalid type: %s, expected %s", describeRaw(raw), expectName(f))
	}
	switch f.kind {
	case kString:
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return wrongType()
		}
	case kBool:
		var b bool
		if json.Unmarshal(raw, &b) != nil {
			return wrongType()
		}
	case kU8, kU16, kU32, kU64, kI32:
		s := string(raw)
		if strings.ContainsAny(s, ".eE") || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) {
			return wrongType()
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			if f.kind == kU64 {
				if _, err := strconv.ParseUint(s, 10, 64); err == nil {
					return nil
				}
			}
			return fmt.Errorf("invalid value: integer `%s`, expected %s", s, expectName(f))
		}
		lo, hi := int64(0), int64(math.MaxInt64)
		switch f.kind {
		case kU8:
			hi = math.MaxUint8
		case kU16:
			hi = math.MaxUint16
		case kU32:
			hi = math.MaxUint32
		case kI32:
			lo, hi = math.MinInt32, math.MaxInt32
		}
		if n < lo || n > hi {
			return fmt.Errorf("invalid value: integer `%s`, expected %s", s, expectName(f))
		}
	case kEnum, kEnumFold:
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return wrongType()
		}
		for _, e := range f.enum {
			if s == e || (f.kind == kEnumFold && strings.EqualFold(s, e)) {
				return nil
			}
		}
		q := make([]string, len(f.enum))
		for i, e := range f.enum {
			q[i] = "`" + e + "`"
		}
		return fmt.Errorf("unknown variant `%s`, expected one of %s", s, strings.Join(q, ", "))
	case kObject:
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		_, err := f.sub.decodeObject(dec)
		return err
	case kStrings:
		var v []json.RawMessage
		if json.Unmarshal(raw, &v) != nil {
			return wrongType()
		}
		for _, e := range v {
			if err := checkValue(field{kind: kString}, e); err != nil {
				return err
			}
		}
	case kObjects:
		var v []json.RawMessage
		if json.Unmarshal(raw, &v) != nil {
			return wrongType()
		}
		for _, e := range v {
			dec := json.NewDecoder(bytes.NewReader(e))
			dec.UseNumber()
			if _, err := f.sub.decodeObject(dec); err != nil {
				return err
			}
		}
	case kAnyObject:
		var v map[string]any
		if json.Unmarshal(raw, &v) != nil {
			return wrongType()
		}
	}
	return nil
}

// Body schemas, after the serde structs in src/vmm/src/vmm_config (v1.16).
var (
	tokenBucketSchema = &schema{name: "TokenBucketConfig", fields: []field{
		{name: "size", kind: kU64, required: true},
		{name: "one_time_burst", kind: kU64},
		{name: "refill_time", kind: kU64, required: true},
	}}
	rateLimiterSchema = &schema{name: "RateLimiterConfig", fields: []field{
		{name: "bandwidth", kind: kObject, sub: tokenBucketSchema},
		{name: "ops", kind: kObject, sub: tokenBucketSchema},
	}}
	machineConfigSchema = &schema{name: "MachineConfig", fields: []field{
		{name: "vcpu_count", kind: kU8, required: true},
		{name: "mem_size_mib", kind: kU64, required: true},
		{name: "smt", kind: kBool},
		{name: "cpu_template", kind: kEnum, enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}},
		{name: "track_dirty_pages", kind: kBool},
		{name: "huge_pages", kind: kEnum, enum: []string{"None", "2M"}},
	}}
	machineConfigPatchSchema = &schema{name: "MachineConfigUpdate", fields: []field{
		{name: "vcpu_count", kind: kU8},
		{name: "mem_size_mib", kind: kU64},
		{name: "smt", kind: kBool},
		{name: "cpu_template", kind: kEnum, enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}},
		{name: "track_dirty_pages", kind: kBool},
		{name: "huge_pages", kind: kEnum, enum: []string{"None", "2M"}},
	}}
	bootSourceSchema = &schema{name: "BootSourceConfig", fields: []field{
		{name: "kernel_image_path", kind: kString, required: true},
		{name: "initrd_path", kind: kString},
		{name: "boot_args", kind: kString},
	}}
	driveSchema = &schema{name: "BlockDeviceConfig", fields: []field{
		{name: "drive_id", kind: kString, required: true},
		{name: "partuuid", kind: kString},
		{name: "is_root_device", kind: kBool, required: true},
		{name: "cache_type", kind: kEnum, enum: []string{"Unsafe", "Writeback"}},
		{name: "is_read_only", kind: kBool},
		{name: "path_on_host", kind: kString},
		{name: "rate_limiter", kind: kObject, sub: rateLimiterSchema},
		{name: "io_engine", kind: kEnum, enum: []string{"Sync", "Async"}},
		{name: "socket", kind: kString},
	}}
	drivePatchSchema = &schema{name: "BlockDeviceUpdateConfig", fields: []field{
		{name: "drive_id", kind: kString, required: true},
		{name: "path_on_host", kind: kString},
		{name: "rate_limiter", kind: kObject, sub: rateLimiterSchema},
	}}
	pmemSchema = &schema{name: "PmemConfig", fields: []field{
		{name: "id", kind: kString, required: true},
		{name: "path_on_host", kind: kString, required: true},
		{name: "root_device", kind: kBool},
		{name: "read_only", kind: kBool},
		{name: "rate_limiter", kind: kObject, sub: rateLimiterSchema},
	}}
	pmemPatchSchema = &schema{name: "PmemUpdateConfig", fields: []field{
		{name: "id", kind: kString, required: true},
		{name: "rate_limiter", kind: kObject, sub: rateLimiterSchema},
	}}
	netSchema = &schema{name: "NetworkInterfaceConfig", fields: []field{
		{name: "iface_id", kind: kString, required: true},
		{name: "host_dev_name", kind: kString, required: true},
		{name: "guest_mac", kind: kString},
		{name: "mtu", kind: kU16},
		{name: "rx_rate_limiter", kind: kObject, sub: rateLimiterSchema},
		{name: "tx_rate_limiter", kind: kObject, sub: rateLimiterSchema},
	}}
	netPatchSchema = &schema{name: "NetworkInterfaceUpdateConfig", fields: []field{
		{name: "iface_id", kind: kString, required: true},
		{name: "rx_rate_limiter", kind: kObject, sub: rateLimiterSchema},
		{name: "tx_rate_limiter", kind: kObject, sub: rateLimiterSchema},
	}}
	vsockSchema = &schema{name: "VsockDeviceConfig", fields: []field{
		{name: "vsock_id", kind: kString},
		{name: "guest_cid", kind: kU32, required: true},
		{name: "uds_path", kind: kString, required: true},
	}}
	loggerSchema = &schema{name: "LoggerConfig", fields: []field{
		{name: "log_path", kind: kString},
		{name: "level", kind: kEnumFold, enum: []string{"Error", "Warning", "Info", "Debug", "Trace", "Off"}},
		{name: "show_level", kind: kBool},
		{name: "show_log_origin", kind: kBool},
		{name: "module", kind: kString},
	}}
	metricsSchema = &schema{name: "MetricsConfig", lenient: true, fields: []field{
		{name: "metrics_path", kind: kString, required: true},
	}}
	actionSchema = &schema{name: "ActionBody", fields: []field{
		{name: "action_type", kind: kEnum, required: true, enum: []string{"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}},
	}}
	vmStateSchema = &schema{name: "Vm", fields: []field{
		{name: "state", kind: kEnum, required: true, enum: []string{"Paused", "Resumed"}},
	}}
	balloonSchema = &schema{name: "BalloonDeviceConfig", fields: []field{
		{name: "amount_mib", kind: kU32, required: true},
		{name: "deflate_on_oom", kind: kBool, required: true},
		{name: "stats_polling_interval_s", kind: kU16},
		{name: "free_page_hinting", kind: kBool},
		{name: "free_page_reporting", kind: kBool},
	}}
	balloonPatchSchema = &schema{name: "BalloonUpdateConfig", fields: []field{
		{name: "amount_mib", kind: kU32, required: true},
	}}
	balloonStatsPatchSchema = &schema{name: "BalloonUpdateStatsConfig", fields: []field{
		{name: "stats_polling_interval_s", kind: kU16, required: true},
	}}
	balloonHintSchema = &schema{name: "StartHintingCmd", fields: []field{
		{name: "acknowledge_on_stop", kind: kBool},
	}}
	entropySchema = &schema{name: "EntropyDeviceConfig", fields: []field{
		{name: "rate_limiter", kind: kObject, sub: rateLimiterSchema},
	}}
	serialSchema = &schema{name: "SerialConfig", fields: []field{
		{name: "serial_out_path", kind: kString},
		{name: "rate_limiter", kind: kObject, sub: tokenBucketSchema},
	}}
	mmdsConfigSchema = &schema{name: "MmdsConfig", fields: []field{
		{name: "version", kind: kEnum, enum: []string{"V1", "V2"}},
		{name: "network_interfaces", kind: kStrings, required: true},
		{name: "ipv4_address", kind: kString},
		{name: "imds_compat", kind: kBool},
	}}
	snapshotCreateSchema = &schema{name: "CreateSnapshotParams", fields: []field{
		{name: "snapshot_type", kind: kEnum, enum: []string{"Full", "Diff"}},
		{name: "snapshot_path", kind: kString, required: true},
		{name: "mem_file_path", kind: kString, required: true},
	}}
	memBackendSchema = &schema{name: "MemBackendConfig", fields: []field{
		{name: "backend_type", kind: kEnum, required: true, enum: []string{"File", "Uffd"}},
		{name: "backend_path", kind: kString, required: true},
	}}
	netOverrideSchema = &schema{name: "NetworkOverride", fields: []field{
		{name: "iface_id", kind: kString, required: true},
		{name: "host_dev_name", kind: kString, required: true},
	}}
	vsockOverrideSchema = &schema{name: "VsockOverride", fields: []field{
		{name: "uds_path", kind: kString, required: true},
	}}
	snapshotLoadSchema = &schema{name: "LoadSnapshotConfig", fields: []field{
		{name: "snapshot_path", kind: kString, required: true},
		{name: "mem_file_path", kind: kString},
		{name: "mem_backend", kind: kObject, sub: memBackendSchema},
		{name: "enable_diff_snapshots", kind: kBool},
		{name: "track_dirty_pages", kind: kBool},
		{name: "resume_vm", kind: kBool},
		{name: "network_overrides", kind: kObjects, sub: netOverrideSchema},
		{name: "vsock_override", kind: kObject, sub: vsockOverrideSchema},
		{name: "clock_realtime", kind: kBool},
	}}
	hotplugMemorySchema = &schema{name: "MemoryHotplugConfig", fields: []field{
		{name: "total_size_mib", kind: kU32},
		{name: "slot_size_mib", kind: kU32},
		{name: "block_size_mib", kind: kU32},
	}}
	hotplugMemoryPatchSchema = &schema{name: "MemoryHotplugSizeUpdate", fields: []field{
		{name: "requested_size_mib", kind: kU32},
	}}
	anyObjectSchema = &schema{name: "Value", lenient: true}
)
