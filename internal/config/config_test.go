package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadLayers(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(file, []byte("state_dir = \"/srv/b\"\nbridge = \"br9\"\negress_nat = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"BANGER_CONFIG": file, "BANGER_BRIDGE": "brenv", "BANGER_RUN_DIR": "/tmp/r"}
	c, err := Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/srv/b" || c.Bridge != "brenv" || !c.EgressNAT || c.RunDir != "/tmp/r" {
		t.Fatalf("layers wrong: %+v", c)
	}
	if c.Socket != "/tmp/r/bangerd.sock" || c.SSHKeyPath != "/srv/b/ssh/id_ed25519" || c.File != file {
		t.Fatalf("derived wrong: %+v", c)
	}
}

func TestLoadErrors(t *testing.T) {
	env := map[string]string{"BANGER_CONFIG": "/nonexistent/x.toml"}
	if _, err := Load(func(k string) string { return env[k] }); err == nil {
		t.Fatal("explicit missing config file accepted")
	}
	env = map[string]string{"BANGER_CONFIG": "", "BANGER_EGRESS_NAT": "maybe"}
	if _, err := Load(func(k string) string { return env[k] }); err == nil {
		t.Fatal("bad bool accepted")
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("state_dir = [\n"), 0o600)
	env = map[string]string{"BANGER_CONFIG": bad}
	if _, err := Load(func(k string) string { return env[k] }); err == nil {
		t.Fatal("malformed toml accepted")
	}
	// A setting in other letter case: refused, naming the file and the
	// key (the decoder would take it, and of two spellings a random one).
	for _, data := range []string{"State_Dir = \"/srv/b\"\n", "state_dir = \"x\"\nsTate_dir = \"y\"\n"} {
		os.WriteFile(bad, []byte(data), 0o600)
		_, err := Load(func(k string) string { return env[k] })
		if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "lower case (state_dir)") {
			t.Errorf("%q: err %v", data, err)
		}
	}
}

func TestEnvRoundTrip(t *testing.T) {
	c := Defaults()
	c.StateDir = "/x"
	c.Finish()
	m := map[string]string{}
	for _, kv := range c.Env() {
		for i := range kv {
			if kv[i] == '=' {
				m[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	m["BANGER_CONFIG"] = "/nonexistent-ok"
	delete(m, "BANGER_CONFIG")
	c2, err := Load(func(k string) string { return m[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c2.StateDir != "/x" || c2.Socket != c.Socket {
		t.Fatalf("round trip: %+v", c2)
	}
}
