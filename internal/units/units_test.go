package units

import (
	"math"
	"strings"
	"testing"
	"time"
)

// The table is internal/storage's ParseSize table: the parsers must agree.
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
		{"1.", 1},
		{".5K", 512},
		{"1.9999", 1}, // fractions of a byte round down
		{"8388607T", 8388607 << 40},
		{"9223372036854775807", math.MaxInt64},
		{"9223372036854775807B", math.MaxInt64},
		{"8\u212a", 8 << 10}, // KELVIN SIGN lowers to k; kept as storage has it
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
		{"+8G", "want a number"},
		{"8388608T", "too large"},
		{"9223372036854775808", "too large"},
		{"99999999999999999999", "too large"},
		{"8388608.0T", "too large"},
		{"9223372036854775807.0", "too large"}, // rounds to 2^63 as a float
		{strings.Repeat("9", 400) + ".0", "bad number"},
		{"1e3", "want a number"},
		{"1.2.3G", "bad number"},
		{".", "bad number"},
		{"0x10", "want a number"},
		{"1_000", "want a number"},
	}
	for _, c := range bad {
		got, err := ParseSize(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) || !strings.HasPrefix(err.Error(), "invalid size ") {
			t.Errorf("ParseSize(%q) = %d, %v; want an invalid size error containing %q", c.in, got, err, c.msg)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := []struct {
		n    int64
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1000, "1000B"},
		{1024, "1KiB"},
		{1536, "1536B"}, // 1.5KiB: not a whole KiB
		{512 << 20, "512MiB"},
		{8 << 30, "8GiB"},
		{3 << 29, "1536MiB"},
		{2 << 40, "2TiB"},
		{1 << 50, "1024TiB"},
		{math.MaxInt64, "9223372036854775807B"},
		{-(8 << 30), "-8GiB"},
		{math.MinInt64, "-8388608TiB"},
	}
	for _, c := range cases {
		if got := FormatSize(c.n); got != c.want {
			t.Errorf("FormatSize(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

// FuzzParseSize checks that ParseSize never panics, never returns a size
// below 1 and that FormatSize of its result reads back to the same size.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"8G", "512M", "4GiB", "1.5G", "1024", " 8 G ", "0.5K", "-1", "1e3", "8388607T", "8388608T", "99999999999999999999", ".", "1.2.3G", "8\u212a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if n != 0 || !strings.HasPrefix(err.Error(), "invalid size ") {
				t.Fatalf("ParseSize(%q) = %d, %v; want 0 and an invalid size error", s, n, err)
			}
			return
		}
		if n < 1 {
			t.Fatalf("ParseSize(%q) = %d, below 1", s, n)
		}
		back, err := ParseSize(FormatSize(n))
		if err != nil || back != n {
			t.Fatalf("ParseSize(%q) = %d, but FormatSize gives %q, which reads back as %d, %v", s, n, FormatSize(n), back, err)
		}
	})
}

// FuzzFormatSize checks the round trip from any positive size.
func FuzzFormatSize(f *testing.F) {
	for _, n := range []int64{1, 1000, 1024, 3 << 29, 8 << 30, math.MaxInt64, 1 << 62} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		s := FormatSize(n)
		back, err := ParseSize(s)
		switch {
		case n >= 1 && (err != nil || back != n):
			t.Fatalf("FormatSize(%d) = %q, which reads back as %d, %v", n, s, back, err)
		case n < 1 && err == nil:
			t.Fatalf("FormatSize(%d) = %q, which ParseSize accepts as %d", n, s, back)
		}
	})
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90s": 90 * time.Second, "30m": 30 * time.Minute, "1h30m": 90 * time.Minute, "7d": 7 * 24 * time.Hour,
		"1d12h": 36 * time.Hour, " 2s ": 2 * time.Second, "0": 0, "-5m": -5 * time.Minute,
	} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "xd", "-1d", "1d-5m", "5", "soon", "1d2", "99999999d"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, got)
		}
	}
}
