package api

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestDecodeJSONAccepts(t *testing.T) {
	cases := []struct {
		body string
		want CreateVMRequest
	}{
		{`{"name":"a"}`, CreateVMRequest{Name: "a"}},
		{" \r\n\t{\"name\":\"a\",\"vcpus\":2}\n ", CreateVMRequest{Name: "a", VCPUs: 2}},
		{`{}`, CreateVMRequest{}},
		{`{"name":"a","ports":null,"disk_size_bytes":8589934592}`, CreateVMRequest{Name: "a", DiskSizeBytes: 8 << 30}},
		{`{"n\u0061me":"a"}`, CreateVMRequest{Name: "a"}},
		{`{"ports":["8080:80","53:53/udp"]}`, CreateVMRequest{Ports: []string{"8080:80", "53:53/udp"}}},
	}
	for _, c := range cases {
		var got CreateVMRequest
		if err := DecodeJSON(strings.NewReader(c.body), &got, false); err != nil {
			t.Errorf("DecodeJSON(%q): %v", c.body, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("DecodeJSON(%q) = %+v, want %+v", c.body, got, c.want)
		}
	}
}

func TestDecodeJSONEmpty(t *testing.T) {
	for _, body := range []string{"", " \n\t\r "} {
		v := StopRequest{TimeoutSeconds: 7}
		if err := DecodeJSON(strings.NewReader(body), &v, true); err != nil {
			t.Errorf("DecodeJSON(%q, allowEmpty) = %v, want nil", body, err)
		}
		if v != (StopRequest{TimeoutSeconds: 7}) {
			t.Errorf("DecodeJSON(%q, allowEmpty) changed v to %+v", body, v)
		}
		err := DecodeJSON(strings.NewReader(body), &v, false)
		if !IsInvalidArgument(err) || err.Error() != "request body: empty, want a JSON object" {
			t.Errorf("DecodeJSON(%q) = %v, want an invalid_argument error about the empty body", body, err)
		}
	}
}

func TestDecodeJSONRefuses(t *testing.T) {
	cases := []struct{ body, msg string }{
		{`null`, "request body: null is not a request, want a JSON object"},
		{" null\n", "request body: null is not a request"},
		{`[]`, "request body: want a JSON object, got an array"},
		{`[{"name":"a"}]`, "request body: want a JSON object, got an array"},
		{`"a"`, "request body: want a JSON object, got a string"},
		{`1`, "request body: want a JSON object, got a number"},
		{`true`, "request body: want a JSON object, got a boolean"},
		{`{"name":"a"}{"name":"b"}`, "request body: trailing data after the JSON object"},
		{`{"name":"a"} x`, "request body: trailing data after the JSON object"},
		{`{"name":"a"}null`, "request body: trailing data after the JSON object"},
		{"{}\n{}", "request body: trailing data after the JSON object"},
		{`{"x":1}`, `request body: unknown field "x"`},
		{`{"name":"a","bogus":true}`, `request body: unknown field "bogus"`},
		{`{"Name":"a"}`, `request body: unknown field "Name" (names are case-sensitive: did you mean "name"?)`},
		{`{"NAME":"a"}`, `request body: unknown field "NAME" (names are case-sensitive: did you mean "name"?)`},
		{`{"name":"a","name":"b"}`, `request body: field "name" given twice`},
		{`{"name":1}`, `request body: field "name": want a string, got JSON number`},
		{`{"vcpus":1.5}`, `request body: field "vcpus": want an integer, got JSON number 1.5`},
		{`{"vcpus":"2"}`, `request body: field "vcpus": want an integer, got JSON string`},
		{`{"disk_size_bytes":99999999999999999999}`, `request body: field "disk_size_bytes": want an integer, got JSON number 99999999999999999999`},
		{`{"ports":"8080:80"}`, `request body: field "ports": want an array, got JSON string`},
		{`{"name":"a"`, "request body: JSON is cut short"},
		{`{"name":`, "request body: JSON is cut short"},
		{`{`, "request body: JSON is cut short"},
		{`nul`, "request body: JSON is cut short"},
		{`{"name" "a"}`, "request body: invalid JSON at byte 9: invalid character '\"' after object key"},
		{`{'name':'a'}`, "request body: invalid JSON at byte 2: invalid character '\\'' looking for beginning of object key string"},
		{`nope`, "request body: invalid JSON at byte 2: invalid character 'o' in literal null (expecting 'u')"},
		{"\xef\xbb\xbf{}", "request body: invalid JSON"},
	}
	for _, c := range cases {
		var v CreateVMRequest
		err := DecodeJSON(strings.NewReader(c.body), &v, true)
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeInvalidArgument || HTTPStatus(e.Code) != http.StatusBadRequest {
			t.Errorf("DecodeJSON(%q) = %#v, want an *Error with CodeInvalidArgument", c.body, err)
			continue
		}
		if !strings.HasPrefix(err.Error(), c.msg) {
			t.Errorf("DecodeJSON(%q) = %q, want %q", c.body, err, c.msg)
		}
	}
}

// TestDecodeJSONFieldTypes checks errors on the other request types' field
// kinds.
func TestDecodeJSONFieldTypes(t *testing.T) {
	cases := []struct {
		v         any
		body, msg string
	}{
		{&ExecRequest{}, `{"argv":"ls"}`, `request body: field "argv": want an array, got JSON string`},
		{&ExecRequest{}, `{"argv":["ls"],"tty":"yes"}`, `request body: field "tty": want true or false, got JSON string`},
		{&StopRequest{}, `{"force":1}`, `request body: field "force": want true or false, got JSON number`},
		{&StopRequest{}, `{"Force":true}`, `request body: unknown field "Force" (names are case-sensitive: did you mean "force"?)`},
		{&PortRequest{}, `{"spec":null,"spec":"1:2"}`, `request body: field "spec" given twice`},
	}
	for _, c := range cases {
		err := DecodeJSON(strings.NewReader(c.body), c.v, false)
		if !IsInvalidArgument(err) || !strings.HasPrefix(err.Error(), c.msg) {
			t.Errorf("DecodeJSON(%q into %T) = %v, want %q", c.body, c.v, err, c.msg)
		}
	}
}

func TestDecodeJSONBodyLimit(t *testing.T) {
	// A MaxBytesReader's error passes through unwrapped.
	r := http.MaxBytesReader(nil, io.NopCloser(iotest.HalfReader(strings.NewReader(`{"name":"`+strings.Repeat("a", 100)+`"}`))), 10)
	err := DecodeJSON(r, &CreateVMRequest{}, false)
	var mbe *http.MaxBytesError
	if !errors.As(err, &mbe) || mbe.Limit != 10 || IsInvalidArgument(err) {
		t.Fatalf("DecodeJSON over a MaxBytesReader = %#v, want its *http.MaxBytesError", err)
	}

	// Without one, DecodeJSON caps the body at MaxBodyBytes itself.
	exact := "{}" + strings.Repeat(" ", MaxBodyBytes-2)
	if err := DecodeJSON(strings.NewReader(exact), &CreateVMRequest{}, false); err != nil {
		t.Fatalf("DecodeJSON of exactly MaxBodyBytes = %v, want nil", err)
	}
	err = DecodeJSON(strings.NewReader(exact+" "), &CreateVMRequest{}, false)
	if !errors.As(err, &mbe) || mbe.Limit != MaxBodyBytes {
		t.Fatalf("DecodeJSON of MaxBodyBytes+1 = %#v, want an *http.MaxBytesError", err)
	}
}

func TestDecodeJSONReadError(t *testing.T) {
	boom := errors.New("connection reset")
	err := DecodeJSON(iotest.ErrReader(boom), &CreateVMRequest{}, true)
	if !errors.Is(err, boom) || CodeOf(err) != CodeInternal {
		t.Fatalf("DecodeJSON of a failing reader = %v, want the read error wrapped, not a client error", err)
	}
}

func TestDecodeJSONNotAPointer(t *testing.T) {
	err := DecodeJSON(strings.NewReader(`{}`), CreateVMRequest{}, false)
	if err == nil || IsInvalidArgument(err) {
		t.Fatalf("DecodeJSON into a non-pointer = %v, want an internal error", err)
	}
}

func TestParseBoolParam(t *testing.T) {
	good := []struct {
		query string
		want  bool
	}{
		{"", false},
		{"other=1", false},
		{"force", false},
		{"force=", false},
		{"force=false", false},
		{"force=0", false},
		{"force=true", true},
		{"force=1", true},
		{"force=1&dry_run=yes", true},
	}
	for _, c := range good {
		q, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseBoolParam(q, "force")
		if err != nil || got != c.want {
			t.Errorf("ParseBoolParam(%q) = %v, %v; want %v", c.query, got, err, c.want)
		}
	}
	bad := []struct{ query, msg string }{
		{"force=yes", `query parameter force="yes": want true, false, 1 or 0`},
		{"force=TRUE", `query parameter force="TRUE"`},
		{"force=True", `query parameter force="True"`},
		{"force=t", `query parameter force="t"`},
		{"force=2", `query parameter force="2"`},
		{"force=%2B1", `query parameter force="+1"`},
		{"force=%201", `query parameter force=" 1"`},
		{"force=on", `query parameter force="on"`},
		{"force=1&force=1", "query parameter force given 2 times, want it once"},
		{"force=1&force=0&force", "query parameter force given 3 times"},
	}
	for _, c := range bad {
		q, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseBoolParam(q, "force")
		if got || !IsInvalidArgument(err) || !strings.HasPrefix(err.Error(), c.msg) {
			t.Errorf("ParseBoolParam(%q) = %v, %v; want false and %q", c.query, got, err, c.msg)
		}
	}
}

func TestFieldNames(t *testing.T) {
	type Inner struct {
		A int `json:"a"`
		B int
	}
	type outer struct {
		Inner
		C      string `json:"c,omitempty"`
		D      int    `json:"-"`
		E      int    `json:"-,"`
		hidden int
	}
	got := fieldNames(reflect.TypeOf(&outer{}))
	want := map[string]bool{"a": true, "B": true, "c": true, "-": true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fieldNames = %v, want %v", got, want)
	}
	if fieldNames(reflect.TypeOf(map[string]int{})) != nil || fieldNames(reflect.TypeOf(outer{})) != nil {
		t.Fatal("fieldNames of a non-pointer-to-struct is not nil")
	}
	// A map target still gets the duplicate check.
	var m map[string]int
	if err := DecodeJSON(strings.NewReader(`{"a":1,"a":2}`), &m, false); !IsInvalidArgument(err) {
		t.Fatalf("duplicate key into a map = %v, want invalid_argument", err)
	}
}
