package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzLoad writes arbitrary bytes as the config file and loads it. Load must
// never panic; it must fail exactly when the TOML decoder refuses the bytes
// (bad input is an error naming the file, never ignored); and a config it
// accepts must reach a daemon intact through Env, as the CLI passes it.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"",
		"state_dir = \"/srv/b\"\nbridge = \"br9\"\negress_nat = true\n",
		"state_dir = [\n",
		"state_dir = 1\n",
		"egress_nat = \"yes\"\n",
		"bridge = \"\"\nsocket = \"/tmp/s.sock\"\n",
		"unknown_key = 3\n[table]\nx = 1\n",
		"dns_listen = '127.0.0.1:5353'\nnetwork = \"off\"\n",
		"state_dir = \"a=b\\nc\"\n",
		"\"state_dir\" = \"\\u00e9\"\n",
		"state_dir = \"\"\"\nmulti\nline\"\"\"\n",
		"state_dir = \"x\"\nstate_dir = \"y\"\n",
		"state_dir = \"x\"\nsTate_dir = \"y\"\n",
		"Bridge = \"br1\"\n",
		"\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	file := filepath.Join(f.TempDir(), "config.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"BANGER_CONFIG": file}
		c, err := Load(func(k string) string { return env[k] })

		want := Defaults()
		md, decodeErr := toml.Decode(string(data), &want)
		if decodeErr == nil {
			// A setting's name in other letter case is refused too.
			decodeErr = checkKeyCase(md.Keys())
		}
		if (err == nil) != (decodeErr == nil) {
			t.Fatalf("Load error %v, but the TOML decoder says %v, for %q", err, decodeErr, data)
		}
		if err != nil {
			if !strings.Contains(err.Error(), file) {
				t.Fatalf("Load error %q does not name the file", err)
			}
			return
		}
		want.Finish()
		want.File = file
		if c != want {
			t.Fatalf("Load = %+v, want %+v", c, want)
		}
		if c.Socket == "" || c.SSHKeyPath == "" || c.ImageCacheDir == "" {
			t.Fatalf("derived settings missing: %+v", c)
		}

		// The daemon the CLI starts sees the same file and c.Env().
		child := map[string]string{"BANGER_CONFIG": file}
		for _, kv := range c.Env() {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("Env entry %q has no '='", kv)
			}
			child[k] = v
		}
		c2, err := Load(func(k string) string { return child[k] })
		if err != nil || c2 != c {
			t.Fatalf("through Env: Load = %+v, %v; want %+v", c2, err, c)
		}
	})
}
