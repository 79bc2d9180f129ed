package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Extra packages on the minimal base are unpacked with dpkg -x like the base
// itself, so apt never installs them: the builder works out their
// dependency closure (Depends and Pre-Depends; Recommends and Suggests are
// left out, as apt --no-install-recommends would) from apt's own metadata,
// and refuses what it cannot resolve before anything is downloaded.

// aptDependsArgs make apt-cache print, for the named packages and
// everything they reach through any alternative or provider, only the
// relations an unpacked tree needs.
var aptDependsArgs = []string{"depends", "--recurse", "--no-recommends", "--no-suggests",
	"--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"}

// aptDep is one alternative of a Depends or Pre-Depends entry.
type aptDep struct {
	name      string   // package name; for a virtual one, without apt's <>
	virtual   bool     // apt printed it as <name>: it has no installable version of its own
	providers []string // the packages apt lists under it as providing it
}

// aptPackage is one package apt-cache printed, with its dependency entries,
// each a list of alternatives in the order apt prefers them (a | b).
type aptPackage struct {
	virtual bool
	deps    [][]aptDep
}

// parseAptDepends reads `apt-cache depends --recurse` output: a package at
// column 0 (<name> when it has no installable version), its relations
// indented by two with "|" in place of the first space when the next line
// is an alternative, and the providers of a relation indented by four.
func parseAptDepends(out []byte) (map[string]*aptPackage, error) {
	db := map[string]*aptPackage{}
	var cur *aptPackage
	var dep *aptDep // the last relation read, which provider lines belong to
	orNext := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
		case line[0] != ' ':
			name, virtual := unbracket(line)
			if db[name] == nil {
				db[name] = &aptPackage{virtual: virtual}
			}
			cur, dep, orNext = db[name], nil, false
		case strings.HasPrefix(line, "    "):
			if dep != nil {
				dep.providers = append(dep.providers, strings.TrimSpace(line))
			}
		default:
			if cur == nil {
				return nil, fmt.Errorf("unexpected apt-cache line %q before any package", line)
			}
			kind, target, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, " |")), ": ")
			if !ok {
				return nil, fmt.Errorf("unexpected apt-cache line %q", line)
			}
			if kind != "Depends" && kind != "PreDepends" {
				dep, orNext = nil, false
				continue
			}
			name, virtual := unbracket(target)
			d := aptDep{name: name, virtual: virtual}
			if orNext {
				group := cur.deps[len(cur.deps)-1]
				cur.deps[len(cur.deps)-1] = append(group, d)
			} else {
				cur.deps = append(cur.deps, []aptDep{d})
			}
			group := cur.deps[len(cur.deps)-1]
			dep = &group[len(group)-1]
			orNext = strings.HasPrefix(line, " |")
		}
	}
	return db, sc.Err()
}

func unbracket(s string) (name string, bracketed bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		return s[1 : len(s)-1], true
	}
	return s, false
}

// closureError is a dependency closure that cannot be made.
type closureError struct {
	msg       string
	ambiguous []string // providers of a virtual package, none preferred
}

func (e *closureError) Error() string { return e.msg }

// resolveClosure asks apt for the dependency closure of names and returns
// the packages to unpack besides names and have (packages the build unpacks
// anyway), in the order they were reached. A package named in names that apt
// does not know, or that is only virtual, is refused here, before anything
// is downloaded.
func resolveClosure(ctx context.Context, r Runner, names, have []string) ([]string, error) {
	roots := make([]string, 0, len(names))
	for _, n := range dedupe(names) {
		roots = append(roots, packageName(n))
	}
	out, err := r.Run(ctx, "apt-cache", append(slices.Clone(aptDependsArgs), roots...)...)
	// apt-cache fails only when it knows none of the names; otherwise it
	// leaves the unknown ones out, so either way absence is checked below.
	if err != nil && !aptListsMissing(out, err) {
		return nil, fmt.Errorf("resolving dependencies of %s: %w", strings.Join(roots, ", "), err)
	}
	db, perr := parseAptDepends(out)
	if perr != nil {
		return nil, fmt.Errorf("resolving dependencies of %s: %w", strings.Join(roots, ", "), perr)
	}
	closure, err := dependencyClosure(db, roots, have, nil)
	var ce *closureError
	if !errors.As(err, &ce) || ce.ambiguous == nil {
		return closure, err
	}
	// Several packages provide a virtual one: apt's resolver prefers the
	// provider of highest Priority (mawk, required, for base-files' awk),
	// which takes a second query.
	prio, perr := aptPriorities(ctx, r, db)
	if perr != nil {
		return nil, errors.Join(err, perr)
	}
	return dependencyClosure(db, roots, have, prio)
}

// priorityRank orders Debian's Priority field values.
var priorityRank = map[string]int{"required": 5, "important": 4, "standard": 3, "optional": 2, "extra": 1}

// aptPriorities reads the Priority of every package db lists as a provider.
func aptPriorities(ctx context.Context, r Runner, db map[string]*aptPackage) (map[string]int, error) {
	var providers []string
	for _, p := range db {
		for _, group := range p.deps {
			for _, d := range group {
				providers = append(providers, d.providers...)
			}
		}
	}
	slices.Sort(providers)
	providers = slices.Compact(providers)
	out, err := r.Run(ctx, "apt-cache", append([]string{"show", "--no-all-versions"}, providers...)...)
	if err != nil {
		return nil, fmt.Errorf("reading priorities of %s: %w", strings.Join(providers, ", "), err)
	}
	return parsePriorities(out), nil
}

// parsePriorities reads Package and Priority from apt-cache show stanzas.
func parsePriorities(out []byte) map[string]int {
	prio := map[string]int{}
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "Package: "); ok {
			pkg = strings.TrimSpace(v)
		} else if v, ok := strings.CutPrefix(line, "Priority: "); ok && pkg != "" {
			prio[pkg] = priorityRank[strings.TrimSpace(v)]
		}
	}
	return prio
}

// bestProvider is the one provider of highest priority, or "" when the
// highest is shared (or priorities are unknown).
func bestProvider(providers []string, prio map[string]int) string {
	best, bestRank, tie := "", 0, false
	for _, p := range providers {
		switch r := prio[p]; {
		case r > bestRank:
			best, bestRank, tie = p, r, false
		case r == bestRank:
			tie = true
		}
	}
	if tie || bestRank == 0 {
		return ""
	}
	return best
}

// dependencyClosure walks db from roots breadth first. For each dependency
// entry it keeps an alternative that is already chosen (a root, a package of
// have, or one picked earlier), else takes the first installable one, as apt
// does. A virtual package resolves to a provider already chosen, else to its
// only provider, else to the one of highest priority in prio.
func dependencyClosure(db map[string]*aptPackage, roots, have []string, prio map[string]int) ([]string, error) {
	var unknown, virtual []string
	for _, n := range roots {
		switch p := db[n]; {
		case p == nil:
			unknown = append(unknown, n)
		case p.virtual:
			virtual = append(virtual, n)
		}
	}
	if len(unknown) > 0 {
		return nil, &closureError{msg: fmt.Sprintf("%s %s: not in the Debian archive known to apt (apt-get update?)",
			plural(len(unknown), "package", "packages"), strings.Join(unknown, ", "))}
	}
	if len(virtual) > 0 {
		return nil, &closureError{msg: fmt.Sprintf("%s %s: virtual or without an installable version; name a package that provides it (apt-cache showpkg %s)",
			plural(len(virtual), "package", "packages"), strings.Join(virtual, ", "), virtual[0])}
	}

	chosen := map[string]bool{}
	for _, n := range have {
		chosen[n] = true
	}
	parent := map[string]string{} // how a package was reached, for errors
	var queue, extra []string
	take := func(n, from string) {
		if !chosen[n] {
			extra = append(extra, n)
		}
		chosen[n] = true
		if _, seen := parent[n]; !seen {
			parent[n] = from
			queue = append(queue, n)
		}
	}
	for _, n := range roots {
		chosen[n] = true
		parent[n] = ""
		queue = append(queue, n)
	}
	installable := func(n string) bool { p := db[n]; return p != nil && !p.virtual }
	chain := func(n string) string {
		path := []string{n}
		for p := parent[n]; p != ""; p = parent[p] {
			path = append([]string{p}, path...)
		}
		return strings.Join(path, " -> ")
	}

	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		p := db[n]
		if p == nil {
			continue // a package of have that apt was not asked about
		}
	entries:
		for _, group := range p.deps {
			// An alternative already chosen satisfies the entry.
			for _, d := range group {
				if !d.virtual && chosen[d.name] {
					take(d.name, n) // still walked: a package of have may need more
					continue entries
				}
				if d.virtual {
					for _, pr := range d.providers {
						if chosen[pr] && installable(pr) {
							take(pr, n)
							continue entries
						}
					}
				}
			}
			var ambiguous []string
			for _, d := range group {
				if !d.virtual && installable(d.name) {
					take(d.name, n)
					continue entries
				}
				var providers []string
				for _, pr := range d.providers {
					if installable(pr) {
						providers = append(providers, pr)
					}
				}
				if len(providers) == 1 {
					take(providers[0], n)
					continue entries
				}
				if best := bestProvider(providers, prio); best != "" {
					take(best, n)
					continue entries
				}
				if len(providers) > 1 && ambiguous == nil {
					ambiguous = providers
				}
			}
			want := alternatives(group)
			if ambiguous != nil {
				return nil, &closureError{msg: fmt.Sprintf("package %s needs %s, which several packages provide (%s): add one of them to the packages",
					chain(n), want, strings.Join(ambiguous, ", ")), ambiguous: ambiguous}
			}
			return nil, &closureError{msg: fmt.Sprintf("package %s needs %s, which no installable package provides", chain(n), want)}
		}
	}
	return extra, nil
}

func alternatives(group []aptDep) string {
	names := make([]string, len(group))
	for i, d := range group {
		names[i] = d.name
	}
	return strings.Join(names, " | ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// resolveExtras returns the packages the minimal base must add for
// BuildOptions.Packages: those named, then their dependencies that the base
// does not unpack already.
func (b *builder) resolveExtras(ctx context.Context) ([]string, error) {
	if len(b.opts.Packages) == 0 {
		return nil, nil
	}
	requested := dedupe(b.opts.Packages)
	deps, err := resolveClosure(ctx, b.r, requested, minimalPackages)
	if err != nil {
		return nil, err
	}
	roots := make([]string, len(requested))
	for i, n := range requested {
		roots[i] = packageName(n)
	}
	msg := fmt.Sprintf("extra packages %s", strings.Join(roots, ", "))
	if len(deps) > 0 {
		msg += fmt.Sprintf(" need %d more: %s", len(deps), strings.Join(deps, ", "))
	} else {
		msg += " need nothing more"
	}
	if err := b.step(ctx, msg); err != nil {
		return nil, err
	}
	b.note("extra packages %s and %d %s were unpacked without running maintainer scripts (minimal base)",
		strings.Join(roots, ", "), len(deps), plural(len(deps), "dependency", "dependencies"))
	return append(requested, deps...), nil
}

// extraPrograms lists the programs of each requested package from its .deb.
func (b *builder) extraPrograms(ctx context.Context, debs []deb) (map[string][]string, error) {
	programs := map[string][]string{}
	for _, n := range dedupe(b.opts.Packages) {
		name := packageName(n)
		i := slices.IndexFunc(debs, func(d deb) bool { return d.name == name })
		if i < 0 {
			return nil, fmt.Errorf("package %s: apt gave no file for it", name)
		}
		progs, err := packagePrograms(ctx, b.r, debs[i].path)
		if err != nil {
			return nil, err
		}
		programs[name] = progs
	}
	return programs, nil
}
