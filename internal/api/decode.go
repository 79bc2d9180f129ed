package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
)

// DecodeJSON reads a request body holding exactly one JSON object into v, a
// pointer to a request struct. It is stricter than encoding/json: it
// refuses an empty body (unless allowEmpty, when v is left untouched),
// null, any other top-level value than an object, trailing data, field
// names not spelled exactly as in v's json tags (encoding/json matches them
// case-insensitively) and a field given twice (encoding/json keeps the
// last). These problems come back as *Error with CodeInvalidArgument naming
// them.
//
// It reads at most MaxBodyBytes: a longer body gives an
// *http.MaxBytesError, as does an http.MaxBytesReader under r, unchanged
// (errors.As finds it) so the server can answer it as it chooses. Other read
// errors are returned wrapped.
func DecodeJSON(r io.Reader, v any, allowEmpty bool) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	start := skipSpace(body)
	if start == len(body) {
		if allowEmpty {
			return nil
		}
		return bodyError("empty, want a JSON object")
	}
	if body[start] != '{' {
		return notAnObject(body[start:])
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if rest := body[dec.InputOffset():]; skipSpace(rest) < len(rest) {
		return bodyError("trailing data after the JSON object")
	}
	return checkKeys(body, v)
}

func readBody(r io.Reader) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, fmt.Errorf("reading request body: %w", err)
	}
	if len(body) > MaxBodyBytes {
		return nil, &http.MaxBytesError{Limit: MaxBodyBytes}
	}
	return body, nil
}

func bodyError(format string, args ...any) *Error {
	return Errorf(CodeInvalidArgument, "request body: "+format, args...)
}

// skipSpace returns the index of the first byte of b that is not JSON
// whitespace, or len(b).
func skipSpace(b []byte) int {
	for i, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return i
		}
	}
	return len(b)
}

// notAnObject explains a body that does not start with '{'.
func notAnObject(b []byte) error {
	var x any
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&x); err != nil {
		return jsonError(err)
	}
	switch x.(type) {
	case nil:
		return bodyError("null is not a request, want a JSON object")
	case []any:
		return bodyError("want a JSON object, got an array")
	case string:
		return bodyError("want a JSON object, got a string")
	case bool:
		return bodyError("want a JSON object, got a boolean")
	default:
		return bodyError("want a JSON object, got a number")
	}
}

// jsonError turns an encoding/json error into an *Error saying what is
// wrong with the body.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var inv *json.InvalidUnmarshalError
	switch {
	case errors.As(err, &inv):
		return fmt.Errorf("decoding request body: %w", err) // a bug of the caller, not of the client
	case errors.As(err, &syn):
		return bodyError("invalid JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		if typ.Field == "" {
			return bodyError("want %s, got JSON %s", jsonKind(typ.Type), typ.Value)
		}
		return bodyError("field %q: want %s, got JSON %s", typ.Field, jsonKind(typ.Type), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return bodyError("JSON is cut short")
	}
	// encoding/json has no type for this error, only the message
	// `json: unknown field "x"`.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return bodyError("unknown field %s", name)
	}
	return bodyError("%v", err)
}

// jsonKind names the JSON value a Go type decodes from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return t.String()
}

// checkKeys walks the top-level keys of body, an object that decoded
// without error, and refuses duplicates and keys that matched a field of v
// only case-insensitively.
func checkKeys(body []byte, v any) error {
	fields := fieldNames(reflect.TypeOf(v))
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return jsonError(err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonError(err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return bodyError("field %q given twice", key)
		}
		seen[key] = true
		if fields != nil && !fields[key] {
			for f := range fields {
				if strings.EqualFold(f, key) {
					return bodyError("unknown field %q (names are case-sensitive: did you mean %q?)", key, f)
				}
			}
			return bodyError("unknown field %q", key)
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return jsonError(err)
		}
	}
	return nil
}

var fieldNamesCache sync.Map // reflect.Type -> map[string]bool

// fieldNames returns the JSON names of the fields of the struct t points
// to, or nil when t is not a pointer to a struct.
func fieldNames(t reflect.Type) map[string]bool {
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil
	}
	if m, ok := fieldNamesCache.Load(t); ok {
		return m.(map[string]bool)
	}
	m := map[string]bool{}
	addFieldNames(m, t.Elem())
	fieldNamesCache.Store(t, m)
	return m
}

func addFieldNames(m map[string]bool, t reflect.Type) {
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				addFieldNames(m, ft) // promoted fields
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = true
	}
}

// ParseBoolParam reads the boolean query parameter key strictly: absent or
// empty is false, and only true, false, 1 and 0 are accepted. Anything else,
// or the key given more than once, is an *Error with CodeInvalidArgument.
func ParseBoolParam(q url.Values, key string) (bool, error) {
	vals := q[key]
	switch {
	case len(vals) == 0:
		return false, nil
	case len(vals) > 1:
		return false, Errorf(CodeInvalidArgument, "query parameter %s given %d times, want it once", key, len(vals))
	}
	switch vals[0] {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, Errorf(CodeInvalidArgument, "query parameter %s=%q: want true, false, 1 or 0", key, vals[0])
}
