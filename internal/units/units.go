// Package units reads and writes byte sizes such as "8G", "512MiB" or
// "1.5G", for disk sizes given on the command line and in requests, and
// durations that may count days ("7d"), for lifetimes. It
// imports only the standard library, so the CLI, the API and the engine can
// all use it.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// sizeUnits maps a unit suffix (lower case) to its multiplier. Single
// letters and the IEC forms are powers of 1024, as qemu-img, truncate and
// docker read them; the SI forms (KB, MB...) are powers of 1000.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// ParseSize reads a size such as "8G", "512M", "4GiB", "1.5G" or "1024"
// (bytes) and returns it in bytes. Units are case-insensitive; a fraction
// is rounded down to whole bytes. It rejects zero, negative and overflowing
// sizes, so a nil error means 1 <= n <= math.MaxInt64.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("invalid size %q: must be positive", s)
	}
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("invalid size %q: want a number and an optional unit, like 8G, 512M or 4GiB", s)
	}
	var n int64
	if strings.Contains(num, ".") {
		f, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid size %q: bad number %q", s, num)
		}
		v := f * float64(mult)
		// float64(math.MaxInt64) is 2^63, so v below it converts exactly
		// enough; NaN and Inf cannot come from digits and one dot.
		if !(v < math.MaxInt64) {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		n = int64(v)
	} else {
		u, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		if u > math.MaxInt64/mult {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		n = u * mult
	}
	if n <= 0 {
		return 0, fmt.Errorf("invalid size %q: must be positive", s)
	}
	return n, nil
}

// formatUnits are the units FormatSize writes, largest first.
var formatUnits = []struct {
	suffix string
	mult   int64
}{
	{"TiB", 1 << 40},
	{"GiB", 1 << 30},
	{"MiB", 1 << 20},
	{"KiB", 1 << 10},
}

// FormatSize writes n exactly, in the largest binary unit that divides it:
// 8589934592 is "8GiB", 1.5GiB is "1536MiB" and 1000 is "1000B". ParseSize
// reads every result for n >= 1 back to n. Zero is "0B" and negative sizes
// keep their sign.
func FormatSize(n int64) string {
	if n == 0 {
		return "0B"
	}
	for _, u := range formatUnits {
		if n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// ParseDuration parses a Go duration ("90s", "1h30m") that may also count
// days ("30d", "1d12h"): lifetimes are often given in days.
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty duration")
	}
	var days time.Duration
	if i := strings.IndexByte(t, 'd'); i >= 0 {
		n, err := strconv.ParseUint(t[:i], 10, 16)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: want e.g. 90s, 30m, 12h or 7d", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		t = t[i+1:]
		if t == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil || (days > 0 && d < 0) {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 90s, 30m, 12h or 7d", s)
	}
	return days + d, nil
}
