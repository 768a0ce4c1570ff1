package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
)

// Router is a Route compiled for the per-call decision the sidecar and
// the kubernetes:/// library make alike, as grpc-go's xDS resolver makes
// it for proxyless clients: the first Rule whose Match selects the call
// (its :path and headers), then one of that rule's Backends by weight.
// Regular expressions are compiled once, here; a rule that cannot be
// compiled matches no call and is listed in Errors, so the other rules
// keep working. A Router is immutable: safe for concurrent use, and it
// allocates nothing per call.
type Router struct {
	route Route
	rules []compiledRule
	errs  []error
	// headers says whether any rule matches headers.
	headers bool
}

// compiledRule is one Rule ready to match.
type compiledRule struct {
	// never is set when the rule cannot match any call (a part of its
	// Match did not compile).
	never bool
	// host is the Match's Hostname in lower case; wildcard says it is
	// a suffix (".example.com" of "*.example.com").
	host     string
	wildcard bool
	path     stringMatcher
	headers  []headerMatcher
	// cumulative are the running sums of the backends' weights; the last
	// is the rule's total weight.
	cumulative []uint64
	// request and response are the rule's header modifiers with names in
	// lower case and those no HTTP/2 message may carry left out.
	request, response HeaderModifier
}

type stringMatcher struct {
	typ   MatchType
	value string
	re    *regexp.Regexp
}

type headerMatcher struct {
	name string
	stringMatcher
}

// Headers are a call's request headers as a route match reads them.
type Headers interface {
	// Header returns the value of the header named name (lower case),
	// its values joined with "," when it has several (gRPC's header
	// matchers compare the joined value), and whether it is present.
	Header(name string) (value string, ok bool)
}

// NewRouter compiles r. It never fails: what cannot be compiled is in
// Errors, and the rules it spoils match nothing.
func NewRouter(r Route) *Router {
	rt := &Router{route: r, rules: make([]compiledRule, len(r.Rules))}
	for i, rule := range r.Rules {
		cr := &rt.rules[i]
		fail := func(format string, args ...any) {
			cr.never = true
			rt.errs = append(rt.errs, fmt.Errorf("route %s: %s: %s", r.Name, ruleName(i, rule), fmt.Sprintf(format, args...)))
		}
		if h := strings.ToLower(rule.Match.Hostname); h != "" {
			cr.host, cr.wildcard = h, false
			if suffix, ok := strings.CutPrefix(h, "*"); ok {
				cr.host, cr.wildcard = suffix, true
			}
			rt.headers = true
		}
		var err error
		if cr.path, err = compileString(rule.Match.Path); err != nil {
			fail("path regular expression %q: %v", rule.Match.Path.Value, err)
		}
		for _, h := range rule.Match.Headers {
			name := strings.ToLower(h.Name)
			if !Matchable(name) {
				fail("header %q cannot be matched: gRPC matches neither pseudo-headers, binary (-bin) headers nor the ones its transport writes (te, grpc-*)", h.Name)
				continue
			}
			m, err := compileString(h.Value)
			if err != nil {
				fail("header %s regular expression %q: %v", name, h.Value.Value, err)
				continue
			}
			cr.headers = append(cr.headers, headerMatcher{name: name, stringMatcher: m})
			rt.headers = true
		}
		cr.request = cleanModifier(rule.RequestHeaders, func(name string) { fail("request header modifier: %q is not a header a filter may set", name) })
		cr.response = cleanModifier(rule.ResponseHeaders, func(name string) { fail("response header modifier: %q is not a header a filter may set", name) })
		var sum uint64
		for _, b := range rule.Backends {
			sum += uint64(b.Weight)
			cr.cumulative = append(cr.cumulative, sum)
		}
	}
	return rt
}

// ruleName names rule i of a route in errors: by its name if it has one.
func ruleName(i int, rule Rule) string {
	if rule.Name != "" {
		return fmt.Sprintf("rule %d (%s)", i, rule.Name)
	}
	return fmt.Sprintf("rule %d", i)
}

// compileString compiles a StringMatch; a regular expression must match a
// whole value, as gRPC's safe_regex does (RE2 syntax, which Go's regexp
// implements).
func compileString(m StringMatch) (stringMatcher, error) {
	sm := stringMatcher{typ: m.Type, value: m.Value}
	switch m.Type {
	case Prefix, Exact:
	case RegularExpression:
		re, err := regexp.Compile("^(?:" + m.Value + ")$")
		if err != nil {
			// Compile the expression alone for an error that quotes
			// only what the user wrote.
			if _, err2 := regexp.Compile(m.Value); err2 != nil {
				err = err2
			}
			return sm, err
		}
		sm.re = re
	default:
		return sm, fmt.Errorf("unknown match type %d", m.Type)
	}
	return sm, nil
}

func (m *stringMatcher) match(v string) bool {
	switch m.typ {
	case Prefix:
		return strings.HasPrefix(v, m.value)
	case Exact:
		return v == m.value
	default:
		return m.re.MatchString(v)
	}
}

// Matchable reports whether a header (its name in lower case) can select
// calls. As in grpc-go's xDS routing, which matches the metadata an
// application sets: pseudo-headers (:path is matched as the path, the
// rest never), binary headers (-bin) and what the gRPC transport itself
// writes (te, grpc-timeout, grpc-encoding, ...: the reserved grpc-
// prefix) cannot; content-type can.
func Matchable(name string) bool {
	return name != "" && name[0] != ':' && !strings.HasSuffix(name, "-bin") &&
		!strings.HasPrefix(name, "grpc-") && name != "te"
}

// cleanModifier is m with its names in lower case, leaving out (and
// reporting to bad) the names a filter may not change: pseudo-headers,
// HTTP/1 connection-specific fields, names that are not HTTP tokens, and
// values with a NUL, CR or LF, which no HTTP/2 field may carry.
// NewRouter's bad makes the rule match nothing, as a bad regular
// expression does: no call gets half a filter.
func cleanModifier(m HeaderModifier, bad func(string)) HeaderModifier {
	var out HeaderModifier
	clean := func(name string) (string, bool) {
		n := strings.ToLower(name)
		if !modifiable(n) {
			bad(name)
			return "", false
		}
		return n, true
	}
	cleanHeader := func(h Header) (Header, bool) {
		n, ok := clean(h.Name)
		if ok && strings.ContainsAny(h.Value, "\x00\r\n") {
			bad(h.Name + ": " + strconv.Quote(h.Value))
			return Header{}, false
		}
		return Header{Name: n, Value: h.Value}, ok
	}
	for _, h := range m.Set {
		if h, ok := cleanHeader(h); ok {
			out.Set = append(out.Set, h)
		}
	}
	for _, h := range m.Add {
		if h, ok := cleanHeader(h); ok {
			out.Add = append(out.Add, h)
		}
	}
	for _, name := range m.Remove {
		if n, ok := clean(name); ok {
			out.Remove = append(out.Remove, n)
		}
	}
	return out
}

// modifiable reports whether a header filter may change the header
// (lower case): an HTTP token, not a pseudo-header, and not one of the
// fields HTTP/2 forbids or gRPC's framing depends on.
func modifiable(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	switch name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "te", "content-length":
		return false
	}
	return true
}

// Route is the route the Router was compiled from.
func (rt *Router) Route() *Route { return &rt.route }

// Errors lists what could not be compiled, one error per problem naming
// the route and the rule; those rules match no call.
func (rt *Router) Errors() []error { return rt.errs }

// MatchesHeaders reports whether any rule reads headers: a caller whose
// headers are costly to reach may pass NoHeaders when none does.
func (rt *Router) MatchesHeaders() bool { return rt.headers }

// NoHeaders is a call without headers.
var NoHeaders Headers = noHeaders{}

type noHeaders struct{}

func (noHeaders) Header(string) (string, bool) { return "", false }

// Rule is rule i of the route.
func (rt *Router) Rule(i int) *Rule { return &rt.route.Rules[i] }

// Match returns the index of the first rule that selects the call to path
// with headers h, or -1 when none does.
func (rt *Router) Match(path string, h Headers) int {
	for i := range rt.rules {
		if rt.rules[i].matches(path, h) {
			return i
		}
	}
	return -1
}

func (cr *compiledRule) matches(path string, h Headers) bool {
	if cr.never || !cr.path.match(path) {
		return false
	}
	if cr.host != "" && !cr.matchesHost(h) {
		return false
	}
	for i := range cr.headers {
		m := &cr.headers[i]
		v, ok := h.Header(m.name)
		if !ok || !m.match(v) {
			return false
		}
	}
	return true
}

// matchesHost reports whether the call's :authority names the rule's
// host: the host part (a port, and an IPv6 literal's brackets, left
// off) compared without regard to case.
func (cr *compiledRule) matchesHost(h Headers) bool {
	auth, ok := h.Header(":authority")
	if !ok {
		return false
	}
	if i := strings.LastIndexByte(auth, ':'); i >= 0 && !strings.Contains(auth[i:], "]") {
		auth = auth[:i]
	}
	if cr.wildcard {
		// One label or more before the suffix.
		return len(auth) > len(cr.host) && strings.EqualFold(auth[len(auth)-len(cr.host):], cr.host)
	}
	return strings.EqualFold(auth, cr.host)
}

// Errors of the per-call decision, for errors.Is; both fail the call with
// UNAVAILABLE, as grpc-go fails it.
var (
	// ErrNoRule: no rule of the route selects the call.
	ErrNoRule = errors.New("no route rule matches the call")
	// ErrNoWeight: the matched rule's backends weigh nothing together.
	ErrNoWeight = errors.New("the route rule's backends have a total weight of 0")
)

// randUint64N draws a weighted pick; tests replace it.
var randUint64N = rand.Uint64N

// Backend picks the backend of rule i for one call: uniformly at random
// over the sum of the weights, as grpc-go's weighted clusters pick, so a
// backend of weight 0 gets no call. It fails with ErrNoWeight when the
// weights sum to 0.
func (rt *Router) Backend(i int) (Backend, error) {
	cum := rt.rules[i].cumulative
	if len(cum) == 0 || cum[len(cum)-1] == 0 {
		return Backend{}, ErrNoWeight
	}
	if len(cum) == 1 {
		return rt.route.Rules[i].Backends[0], nil
	}
	n := randUint64N(cum[len(cum)-1])
	for j, c := range cum {
		if n < c {
			return rt.route.Rules[i].Backends[j], nil
		}
	}
	panic("unreachable: a draw below the total weight")
}

// Decide is the whole per-call decision: the first rule that selects the
// call and one of its backends. The rule's index is where per-rule policy
// (timeouts, retries) attaches; rule is nil with ErrNoRule.
func (rt *Router) Decide(path string, h Headers) (i int, rule *Rule, b Backend, err error) {
	i = rt.Match(path, h)
	if i < 0 {
		return i, nil, Backend{}, ErrNoRule
	}
	b, err = rt.Backend(i)
	return i, &rt.route.Rules[i], b, err
}

// RequestHeaders is rule i's request header modifier, names in lower
// case.
func (rt *Router) RequestHeaders(i int) *HeaderModifier { return &rt.rules[i].request }

// ResponseHeaders is rule i's response header modifier, names in lower
// case.
func (rt *Router) ResponseHeaders(i int) *HeaderModifier { return &rt.rules[i].response }

// Empty reports whether the modifier changes nothing.
func (m *HeaderModifier) Empty() bool {
	return len(m.Set) == 0 && len(m.Add) == 0 && len(m.Remove) == 0
}

// Changes reports whether the modifier names header (lower case): a
// header it sets or removes is replaced, so the original values go.
func (m *HeaderModifier) Changes(name string) bool {
	for _, h := range m.Set {
		if h.Name == name {
			return true
		}
	}
	for _, r := range m.Remove {
		if r == name {
			return true
		}
	}
	return false
}
