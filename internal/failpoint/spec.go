package failpoint

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

type actionKind int

const (
	actOff actionKind = iota
	actError
	actPanic
	actSleep
	actKill
)

type action struct {
	kind  actionKind
	msg   string        // error, panic
	sleep time.Duration // sleep
}

// step is one "N*action" of a spec; count 0 means every later hit.
type step struct {
	count  int
	action action
}

// program is a parsed spec with its position: each hit consumes from the
// first step.
type program struct {
	mu    sync.Mutex
	steps []step
}

// next returns the action for this hit and advances the counts.
func (p *program) next() action {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.steps) == 0 {
		return action{kind: actOff}
	}
	s := &p.steps[0]
	a := s.action
	if s.count > 0 {
		s.count--
		if s.count == 0 {
			p.steps = p.steps[1:]
		}
	}
	return a
}

const actionSyntax = "want off, error, error(msg), panic, panic(msg), sleep(duration) or kill, optionally after a count such as 2*"

// parseSpec parses one point's spec, such as "2*off->error(boom)".
func parseSpec(spec string) (*program, error) {
	prog, err := parseSteps(spec)
	if err != nil {
		return nil, fmt.Errorf("spec %q: %w", spec, err)
	}
	return prog, nil
}

func parseSteps(spec string) (*program, error) {
	parts := strings.Split(spec, "->")
	prog := &program{steps: make([]step, 0, len(parts))}
	for i, part := range parts {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("step %d is empty", i+1)
		}
		s, err := parseStep(part)
		if err != nil && len(parts) > 1 {
			return nil, fmt.Errorf("step %q: %w", part, err)
		}
		if err != nil {
			return nil, err
		}
		prog.steps = append(prog.steps, s)
	}
	for i, s := range prog.steps[:len(prog.steps)-1] {
		if s.count == 0 {
			return nil, fmt.Errorf("step %q has no count, so it applies to every later hit and the steps after it never run", strings.TrimSpace(parts[i]))
		}
	}
	return prog, nil
}

func parseStep(s string) (step, error) {
	var st step
	digits := 0
	for digits < len(s) && s[digits] >= '0' && s[digits] <= '9' {
		digits++
	}
	if digits > 0 {
		if digits == len(s) || s[digits] != '*' {
			return st, fmt.Errorf("a count must be followed by '*', as in 2*error")
		}
		n, err := strconv.Atoi(s[:digits])
		if err != nil || n < 1 {
			return st, fmt.Errorf("count %s is not a whole number from 1 up", s[:digits])
		}
		st.count = n
		s = strings.TrimSpace(s[digits+1:])
	}
	word, arg, hasArg := s, "", false
	if open := strings.IndexByte(s, '('); open >= 0 {
		if !strings.HasSuffix(s, ")") {
			return st, fmt.Errorf("argument of %q is not closed with ')'", s[:open])
		}
		word, arg, hasArg = strings.TrimSpace(s[:open]), s[open+1:len(s)-1], true
	}
	switch word {
	case "off", "kill":
		if hasArg {
			return st, fmt.Errorf("%s takes no argument", word)
		}
		st.action.kind = actOff
		if word == "kill" {
			st.action.kind = actKill
		}
	case "error", "panic":
		st.action.kind = actError
		if word == "panic" {
			st.action.kind = actPanic
		}
		st.action.msg = strings.TrimSpace(arg)
	case "sleep":
		if !hasArg {
			return st, fmt.Errorf("sleep needs a duration, as in sleep(250ms)")
		}
		d, err := time.ParseDuration(strings.TrimSpace(arg))
		if err != nil {
			return st, fmt.Errorf("sleep: %w", err)
		}
		if d < 0 {
			return st, fmt.Errorf("sleep: negative duration %s", d)
		}
		st.action = action{kind: actSleep, sleep: d}
	default:
		return st, fmt.Errorf("unknown action %q: %s", word, actionSyntax)
	}
	return st, nil
}

// parseList parses EnvVar's value, "name=spec;name=spec"; empty entries
// (such as after a trailing ';') are ignored.
func parseList(s string) (map[string]*program, error) {
	out := map[string]*program{}
	for _, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, spec, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("entry %q: want name=spec", entry)
		}
		name = strings.TrimSpace(name)
		if err := checkName(name); err != nil {
			return nil, err
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("failpoint %s is set twice", name)
		}
		prog, err := parseSpec(spec)
		if err != nil {
			return nil, fmt.Errorf("failpoint %s: %w", name, err)
		}
		out[name] = prog
	}
	return out, nil
}
