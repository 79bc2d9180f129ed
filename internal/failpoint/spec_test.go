package failpoint

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	good := []struct {
		spec string
		want []step
	}{
		{"off", []step{{action: action{kind: actOff}}}},
		{"error", []step{{action: action{kind: actError}}}},
		{" error( disk on fire ) ", []step{{action: action{kind: actError, msg: "disk on fire"}}}},
		{"error(a(b))", []step{{action: action{kind: actError, msg: "a(b)"}}}},
		{"panic", []step{{action: action{kind: actPanic}}}},
		{"panic(boom)", []step{{action: action{kind: actPanic, msg: "boom"}}}},
		{"sleep(250ms)", []step{{action: action{kind: actSleep, sleep: 250 * time.Millisecond}}}},
		{"sleep(0s)", []step{{action: action{kind: actSleep}}}},
		{"kill", []step{{action: action{kind: actKill}}}},
		{"1*error", []step{{count: 1, action: action{kind: actError}}}},
		{"2*off->error", []step{{count: 2, action: action{kind: actOff}}, {action: action{kind: actError}}}},
		{"1*off -> 1*sleep(1s) -> kill", []step{
			{count: 1, action: action{kind: actOff}},
			{count: 1, action: action{kind: actSleep, sleep: time.Second}},
			{action: action{kind: actKill}},
		}},
		{"10* error(x)", []step{{count: 10, action: action{kind: actError, msg: "x"}}}},
	}
	for _, c := range good {
		prog, err := parseSpec(c.spec)
		if err != nil {
			t.Errorf("parseSpec(%q): %v", c.spec, err)
			continue
		}
		if len(prog.steps) != len(c.want) {
			t.Errorf("parseSpec(%q) = %+v, want %+v", c.spec, prog.steps, c.want)
			continue
		}
		for i := range c.want {
			if prog.steps[i] != c.want[i] {
				t.Errorf("parseSpec(%q) step %d = %+v, want %+v", c.spec, i, prog.steps[i], c.want[i])
			}
		}
	}

	bad := []struct{ spec, msg string }{
		{"", "step 1 is empty"},
		{"error->", "step 2 is empty"},
		{"boom", `unknown action "boom"`},
		{"Error", `unknown action "Error"`},
		{"2error", "a count must be followed by '*'"},
		{"2", "a count must be followed by '*'"},
		{"0*error", "count 0 is not a whole number from 1 up"},
		{"99999999999999999999*error", "is not a whole number"},
		{"*error", `unknown action "*error"`},
		{"error->1*off", "applies to every later hit and the steps after it never run"},
		{"kill(now)", "kill takes no argument"},
		{"off()", "off takes no argument"},
		{"sleep", "sleep needs a duration"},
		{"sleep(fast)", "sleep: time: invalid duration"},
		{"sleep(-1s)", "sleep: negative duration"},
		{"error(oops", "is not closed with ')'"},
	}
	for _, c := range bad {
		_, err := parseSpec(c.spec)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("parseSpec(%q) error = %v, want one containing %q", c.spec, err, c.msg)
			continue
		}
		if !strings.HasPrefix(err.Error(), "spec ") {
			t.Errorf("parseSpec(%q) error %q does not name the spec", c.spec, err)
		}
	}
}

func TestProgramSequence(t *testing.T) {
	cases := []struct {
		spec string
		want string // one letter per hit: o off, e error, s sleep
	}{
		{"error", "eeeeee"},
		{"off", "oooooo"},
		{"1*error", "eooooo"},
		{"2*off->error", "ooeeee"},
		{"2*off->1*error", "ooeooo"},
		{"1*error->2*off->1*sleep(0s)->error", "eooseee"},
	}
	letter := map[actionKind]byte{actOff: 'o', actError: 'e', actSleep: 's', actPanic: 'p', actKill: 'k'}
	for _, c := range cases {
		prog, err := parseSpec(c.spec)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		for range c.want {
			got = append(got, letter[prog.next().kind])
		}
		if string(got) != c.want {
			t.Errorf("spec %q hits = %s, want %s", c.spec, got, c.want)
		}
	}
}

func TestParseList(t *testing.T) {
	got, err := parseList(" start.tap.before=kill ; gc.remove.after=2*off->error;;")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["start.tap.before"] == nil || got["gc.remove.after"] == nil {
		t.Fatalf("parseList = %v, want start.tap.before and gc.remove.after", got)
	}
	if k := got["start.tap.before"].steps[0].action.kind; k != actKill {
		t.Errorf("start.tap.before action = %v, want kill", k)
	}
	if s := got["gc.remove.after"].steps; len(s) != 2 || s[0].count != 2 {
		t.Errorf("gc.remove.after steps = %+v, want 2*off then error", s)
	}
	if got, err := parseList(" ; "); err != nil || len(got) != 0 {
		t.Errorf("parseList of only separators = %v, %v; want empty", got, err)
	}

	bad := []struct{ in, msg string }{
		{"start.tap.before", `entry "start.tap.before": want name=spec`},
		{"Start.tap=error", `invalid failpoint name "Start.tap"`},
		{"a.b=error;a.b=off", "failpoint a.b is set twice"},
		{"a.b=explode", `failpoint a.b: spec "explode": unknown action "explode"`},
		{"a.b=", "failpoint a.b: spec \"\": step 1 is empty"},
	}
	for _, c := range bad {
		_, err := parseList(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("parseList(%q) error = %v, want one containing %q", c.in, err, c.msg)
		}
	}
}

// TestCheckName compares checkName with the regular expression it
// implements.
func TestCheckName(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9]+(\.[a-z0-9-]+)+$`)
	names := []string{
		"start.tap.before", "gc.remove.after", "a.b", "0.1", "vm-create.x", "create.root-disk.after",
		"start", "", ".", "a.", ".a", "a..b", "A.b", "a.B", "a.b_c", "a.b c", "a-b.c", "a.-", "a.b.", "é.b",
		"start.tap.before\n",
	}
	for _, n := range names {
		err := checkName(n)
		if (err == nil) != re.MatchString(n) {
			t.Errorf("checkName(%q) = %v, but the regexp match is %v", n, err, re.MatchString(n))
		}
	}
}
