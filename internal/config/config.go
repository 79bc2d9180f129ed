// Package config loads banger's settings: defaults, then the optional TOML
// file (/etc/banger/config.toml or $BANGER_CONFIG), then BANGER_<KEY>
// environment variables, then flags. Both banger and the bangerd it starts
// read the same environment, which is how tests run isolated daemons.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// DefaultFile is the config file read when BANGER_CONFIG is unset.
const DefaultFile = "/etc/banger/config.toml"

// Config holds every setting. The toml tag is the key; the environment
// variable is BANGER_ + the key in upper case.
type Config struct {
	StateDir       string `toml:"state_dir"`
	RunDir         string `toml:"run_dir"`
	Socket         string `toml:"socket"` // default <run_dir>/bangerd.sock
	LogLevel       string `toml:"log_level"`
	VMM            string `toml:"vmm"` // auto, firecracker, qemu
	FirecrackerBin string `toml:"firecracker_bin"`
	QEMUBin        string `toml:"qemu_bin"`
	Accel          string `toml:"accel"` // auto, kvm, tcg (qemu)
	RootDiskMethod string `toml:"root_disk_method"`
	Bridge         string `toml:"bridge"`
	Subnet         string `toml:"subnet"`
	EgressNAT      bool   `toml:"egress_nat"`
	DNSZone        string `toml:"dns_zone"`
	DNSUpstream    string `toml:"dns_upstream"`
	DNSListen      string `toml:"dns_listen"` // extra listen address, e.g. 127.0.0.1:5353
	SSHKeyPath     string `toml:"ssh_key_path"`
	ImageCacheDir  string `toml:"image_cache_dir"`
	Group          string `toml:"group"`         // socket group; default "banger"
	Network        string `toml:"network"`       // "auto" (needs root) or "off": VMs without a network device
	OCIMaxSize     string `toml:"oci_max_size"`  // largest container image pulled or imported (its layers as declared, and unpacked): "20GiB"; "none" for no cap
	OCICacheMax    string `toml:"oci_cache_max"` // disk space of cached container image layers, least recently used removed beyond it: "10GiB"; "none" for no bound

	// Confinement of each VMM (docs/architecture.md): its own uid from
	// UIDRange, a cgroup with limits, a jail made by JailBin.
	Confine        string `toml:"confine"`         // "on" (default) or "off": VMMs run as root, unconfined (explicit opt-out)
	UIDRange       string `toml:"uid_range"`       // "200000-265535"
	JailBin        string `toml:"jail_bin"`        // banger-jail; next to bangerd, else PATH
	AgentBin       string `toml:"agent_bin"`       // banger-agent, the guest agent minimal images get; next to bangerd, else PATH
	MemoryOverhead string `toml:"memory_overhead"` // VMM memory beyond guest RAM, e.g. "384MiB"
	PidsLimit      string `toml:"pids_limit"`      // processes and threads per VMM
	CPUWeight      string `toml:"cpu_weight"`      // 1..10000, 100 = an equal share
	IOWeight       string `toml:"io_weight"`       // 1..10000 where the kernel has a weight knob
	CgroupRoot     string `toml:"cgroup_root"`     // "/sys/fs/cgroup"
	CgroupParent   string `toml:"cgroup_parent"`   // "banger": VM cgroups are <parent>/<vm-id>

	// FirecrackerJailer, when set, is Firecracker's jailer binary:
	// confined Firecracker VMMs then run through it instead of JailBin,
	// chrooted under <state_dir>/jailer (docs/firecracker.md).
	FirecrackerJailer string `toml:"firecracker_jailer"`

	// Lifetimes, events and metrics.
	MaxTTL             string `toml:"max_ttl"`              // longest --ttl and --idle-timeout: "30d"
	EventsKeep         string `toml:"events_keep"`          // events kept in the store: "10000"
	MetricsListen      string `toml:"metrics_listen"`       // Prometheus listener: a unix socket path or a loopback host:port; "" = none
	MetricsAllowRemote bool   `toml:"metrics_allow_remote"` // allow a metrics_listen address that is not loopback

	// File is the config file that was read, if any.
	File string `toml:"-"`
}

// Defaults returns the built-in settings.
func Defaults() Config {
	return Config{
		StateDir:       "/var/lib/banger",
		RunDir:         "/run/banger",
		LogLevel:       "info",
		VMM:            "auto",
		FirecrackerBin: "firecracker",
		QEMUBin:        "qemu-system-x86_64",
		Accel:          "auto",
		RootDiskMethod: "auto",
		Bridge:         "banger0",
		Subnet:         "172.30.0.0/24",
		DNSZone:        "banger.internal",
		Group:          "banger",
		Network:        "auto",
		Confine:        "on",
		UIDRange:       "200000-265535",
		JailBin:        "banger-jail",
		AgentBin:       "banger-agent",
		MemoryOverhead: "384MiB",
		PidsLimit:      "512",
		CPUWeight:      "100",
		IOWeight:       "100",
		CgroupRoot:     "/sys/fs/cgroup",
		CgroupParent:   "banger",
		MaxTTL:         "30d",
		EventsKeep:     "10000",
		OCIMaxSize:     "20GiB",
		OCICacheMax:    "10GiB",
	}
}

// Load reads defaults, the config file and the environment (getenv; nil
// means os.Getenv), and fills derived defaults.
func Load(getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	c := Defaults()
	file := getenv("BANGER_CONFIG")
	explicit := file != ""
	if file == "" {
		file = DefaultFile
	}
	if md, err := toml.DecodeFile(file, &c); err != nil {
		if !errors.Is(err, fs.ErrNotExist) || explicit {
			return c, fmt.Errorf("config file %s: %w", file, err)
		}
	} else {
		if err := checkKeyCase(md.Keys()); err != nil {
			return c, fmt.Errorf("config file %s: %w", file, err)
		}
		c.File = file
	}
	if err := c.applyEnv(getenv); err != nil {
		return c, err
	}
	c.Finish()
	return c, nil
}

// checkKeyCase refuses a top-level key that is a setting's name in other
// letter case. TOML keys are case-sensitive, but the decoder matches them
// to settings ignoring case, and with both "state_dir" and "State_Dir" in a
// file which one wins changes from run to run.
func checkKeyCase(keys []toml.Key) error {
	t := reflect.TypeOf(Config{})
	for _, k := range keys {
		if len(k) != 1 {
			continue
		}
		for i := range t.NumField() {
			tag := t.Field(i).Tag.Get("toml")
			if tag != k[0] && strings.EqualFold(tag, k[0]) {
				return fmt.Errorf("key %q: settings are written in lower case (%s)", k[0], tag)
			}
		}
	}
	return nil
}

// applyEnv sets every field whose BANGER_<KEY> variable is non-empty.
func (c *Config) applyEnv(getenv func(string) string) error {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		key := t.Field(i).Tag.Get("toml")
		if key == "" || key == "-" {
			continue
		}
		env := "BANGER_" + strings.ToUpper(key)
		s := getenv(env)
		if s == "" {
			continue
		}
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(s)
		case reflect.Bool:
			b, err := strconv.ParseBool(s)
			if err != nil {
				return fmt.Errorf("%s: %w", env, err)
			}
			f.SetBool(b)
		}
	}
	return nil
}

// Finish fills settings derived from others.
func (c *Config) Finish() {
	if c.Socket == "" {
		c.Socket = filepath.Join(c.RunDir, "bangerd.sock")
	}
	if c.SSHKeyPath == "" {
		c.SSHKeyPath = filepath.Join(c.StateDir, "ssh", "id_ed25519")
	}
	if c.ImageCacheDir == "" {
		c.ImageCacheDir = filepath.Join(c.StateDir, "cache")
	}
}

// Env renders c as BANGER_<KEY>=value pairs, for starting a daemon that must
// see the same settings.
func (c Config) Env() []string {
	var out []string
	v := reflect.ValueOf(c)
	t := v.Type()
	for i := range t.NumField() {
		key := t.Field(i).Tag.Get("toml")
		if key == "" || key == "-" {
			continue
		}
		out = append(out, fmt.Sprintf("BANGER_%s=%v", strings.ToUpper(key), v.Field(i).Interface()))
	}
	return out
}
