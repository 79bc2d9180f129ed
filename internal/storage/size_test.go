package storage

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want int64
	}{
		{"1024", 1024},
		{"1", 1},
		{"512M", 512 << 20},
		{"8G", 8 << 30},
		{"8g", 8 << 30},
		{"4GiB", 4 << 30},
		{"4gib", 4 << 30},
		{"2T", 2 << 40},
		{"64K", 64 << 10},
		{"1KB", 1000},
		{"1GB", 1e9},
		{"100B", 100},
		{" 8 G ", 8 << 30},
		{"1.5G", 3 << 29},
		{"0.5K", 512},
		{"8388607T", 8388607 << 40},
	}
	for _, c := range good {
		got, err := ParseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, msg string }{
		{"banana", "want a number"},
		{"", "want a number"},
		{"G", "want a number"},
		{"8X", "want a number"},
		{"8 GiBs", "want a number"},
		{"0", "must be positive"},
		{"0G", "must be positive"},
		{"0.0001", "must be positive"},
		{"-1", "must be positive"},
		{"-8G", "must be positive"},
		{"8388608T", "too large"},
		{"99999999999999999999", "too large"},
		{"1e3", "want a number"},
		{"1.2.3G", "bad number"},
	}
	for _, c := range bad {
		got, err := ParseSize(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseSize(%q) = %d, %v; want error containing %q", c.in, got, err, c.msg)
		}
	}
}
