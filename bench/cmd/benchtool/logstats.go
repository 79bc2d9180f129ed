package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// cmdLogStats reads bangerd's log (slog text lines) and prints the median
// of every duration the daemon logged with one message for the VMs whose
// name starts with a prefix: e.g. msg "vm started" gives took= and each
// step of steps="dirs=1ms rootdisk=..."; "guest ssh connected" gives
// waited=. It tells where a start's time goes without timing inside the
// daemon twice.
func cmdLogStats(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("logstats", flag.ContinueOnError)
	path := fs.String("log", "", "bangerd.log")
	msg := fs.String("msg", "vm started", "the message whose durations to read")
	prefix := fs.String("vm", "", "only VMs whose name starts with this")
	label := fs.String("label", "", "name printed with the figures")
	offset := fs.Int64("offset", 0, "read from this byte of the log")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("no -log given")
	}
	f, err := os.Open(*path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(*offset, io.SeekStart); err != nil {
		return err
	}
	durs, n, err := logDurations(f, *msg, *prefix)
	if err != nil {
		return err
	}
	if *label == "" {
		*label = fmt.Sprintf("%s %s*", *msg, *prefix)
	}
	if n == 0 {
		return fmt.Errorf("no %q line for a vm named %s* in %s", *msg, *prefix, *path)
	}
	var parts []string
	for _, k := range durs.keys {
		parts = append(parts, fmt.Sprintf("%s=%s", k, ms(summarise(durs.m[k]).median)))
	}
	fmt.Printf("%-44s n=%d medians: %s\n", *label, n, strings.Join(parts, " "))
	return nil
}

// keyedDurations keeps durations by key in the order keys were first seen.
type keyedDurations struct {
	keys []string
	m    map[string][]time.Duration
}

func (k *keyedDurations) add(key string, d time.Duration) {
	if _, ok := k.m[key]; !ok {
		k.keys = append(k.keys, key)
	}
	k.m[key] = append(k.m[key], d)
}

// logDurations collects, from the lines with msg for VMs named prefix*,
// every value that parses as a duration, and those inside steps="...".
func logDurations(r io.Reader, msg, prefix string) (keyedDurations, int, error) {
	out := keyedDurations{m: map[string][]time.Duration{}}
	n := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kv := logfmt(sc.Text())
		if kv["msg"] != msg || !strings.HasPrefix(kv["vm"], prefix) {
			continue
		}
		n++
		for _, p := range kvOrder(sc.Text()) {
			if p == "steps" {
				for _, st := range strings.Fields(kv[p]) {
					k, v, _ := strings.Cut(st, "=")
					if d, err := time.ParseDuration(v); err == nil {
						out.add("step:"+k, d)
					}
				}
				continue
			}
			if p == "time" {
				continue
			}
			if d, err := time.ParseDuration(kv[p]); err == nil {
				out.add(p, d)
			}
		}
	}
	return out, n, sc.Err()
}

// logfmt splits a slog text line into its key=value pairs (values may be
// double-quoted, with backslash escapes).
func logfmt(line string) map[string]string {
	m := map[string]string{}
	for _, p := range splitLogfmt(line) {
		m[p[0]] = p[1]
	}
	return m
}

func kvOrder(line string) []string {
	var keys []string
	for _, p := range splitLogfmt(line) {
		keys = append(keys, p[0])
	}
	return keys
}

func splitLogfmt(line string) [][2]string {
	var out [][2]string
	i := 0
	for i < len(line) {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		eq := strings.IndexByte(line[i:], '=')
		if eq < 0 {
			break
		}
		key := line[i : i+eq]
		i += eq + 1
		var val strings.Builder
		if i < len(line) && line[i] == '"' {
			i++
			for i < len(line) && line[i] != '"' {
				if line[i] == '\\' && i+1 < len(line) {
					i++
				}
				val.WriteByte(line[i])
				i++
			}
			i++ // the closing quote
		} else {
			for i < len(line) && line[i] != ' ' {
				val.WriteByte(line[i])
				i++
			}
		}
		out = append(out, [2]string{key, val.String()})
	}
	return out
}
