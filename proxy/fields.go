package proxy

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// The request rules of RFC 9113 §8.1–8.3 that a client's header blocks
// must follow before the proxy forwards them. A block that breaks one
// makes the request malformed: the stream is reset with PROTOCOL_ERROR
// (§8.1.1) and nothing of it reaches an upstream.

// requestHead is what the proxy keeps from a well-formed request header
// block.
type requestHead struct {
	path string
	// contentLength is the declared length of the request's content, or
	// -1 when the request declares none.
	contentLength int64
}

// checkRequest validates the header block that opens a stream.
func checkRequest(fields []hpack.HeaderField) (requestHead, error) {
	head := requestHead{contentLength: -1}
	var method, scheme, path, authority bool
	var methodValue string
	regular := false
	for _, hf := range fields {
		if len(hf.Name) > 0 && hf.Name[0] == ':' {
			if regular {
				return head, fmt.Errorf("pseudo-header %s after a regular field", hf.Name)
			}
			var seen *bool
			switch hf.Name {
			case ":method":
				seen, methodValue = &method, hf.Value
			case ":scheme":
				seen = &scheme
			case ":path":
				seen, head.path = &path, hf.Value
			case ":authority":
				seen = &authority
			default:
				return head, fmt.Errorf("pseudo-header %s is not one a request may carry", hf.Name)
			}
			if *seen {
				return head, fmt.Errorf("pseudo-header %s repeated", hf.Name)
			}
			*seen = true
			if hf.Name != ":authority" && hf.Value == "" {
				return head, fmt.Errorf("pseudo-header %s is empty", hf.Name)
			}
			if err := checkValue(hf); err != nil {
				return head, err
			}
			continue
		}
		regular = true
		if err := checkRegular(hf); err != nil {
			return head, err
		}
		if hf.Name == "content-length" {
			n, err := strconv.ParseUint(hf.Value, 10, 63)
			if err != nil {
				return head, fmt.Errorf("content-length %q is not a number", hf.Value)
			}
			if head.contentLength >= 0 && head.contentLength != int64(n) {
				return head, errors.New("content-length given twice with different values")
			}
			head.contentLength = int64(n)
		}
	}
	switch {
	case !method:
		return head, errors.New("no :method")
	case !scheme:
		return head, errors.New("no :scheme")
	case !path:
		return head, errors.New("no :path")
	}
	if head.path[0] != '/' && (head.path != "*" || methodValue != "OPTIONS") {
		return head, fmt.Errorf(":path %q is neither absolute nor * for OPTIONS", head.path)
	}
	return head, nil
}

// checkTrailers validates a header block that ends a stream after its
// request headers: it must end the stream and carry no pseudo-header.
func checkTrailers(fields []hpack.HeaderField, end bool) error {
	if !end {
		return errors.New("a second header block that does not end the stream")
	}
	for _, hf := range fields {
		if len(hf.Name) > 0 && hf.Name[0] == ':' {
			return fmt.Errorf("pseudo-header %s in trailers", hf.Name)
		}
		if err := checkRegular(hf); err != nil {
			return err
		}
	}
	return nil
}

// checkRegular validates a regular field: its name (a lowercase token,
// RFC 9110 §5.1, as x/net's framer and so grpc-go servers require), its
// value, and that it is not one of the HTTP/1 connection-specific fields
// HTTP/2 forbids (§8.2.2).
func checkRegular(hf hpack.HeaderField) error {
	if !httpguts.ValidHeaderFieldName(hf.Name) {
		return fmt.Errorf("field name %q is not a token (empty, or a separator, space or control in it)", hf.Name)
	}
	for i := 0; i < len(hf.Name); i++ {
		if c := hf.Name[i]; 'A' <= c && c <= 'Z' {
			return fmt.Errorf("field name %q has an uppercase character", hf.Name)
		}
	}
	switch hf.Name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		return fmt.Errorf("connection-specific field %s", hf.Name)
	case "te":
		if hf.Value != "trailers" {
			return fmt.Errorf("te %q: only \"trailers\" is allowed", hf.Value)
		}
	}
	return checkValue(hf)
}

// checkValue rejects values with a control character other than tab:
// NUL, CR and LF, which §8.2.1 forbids, and the others, which RFC 9110
// §5.5 does and grpc-go servers reset a stream for. It also rejects
// whitespace at either end of a value (§8.2.1).
func checkValue(hf hpack.HeaderField) error {
	v := hf.Value
	if !httpguts.ValidHeaderFieldValue(v) {
		return fmt.Errorf("field %s has a control character in its value", hf.Name)
	}
	if v != "" && (isSpace(v[0]) || isSpace(v[len(v)-1])) {
		return fmt.Errorf("field %s has whitespace at an end of its value", hf.Name)
	}
	return nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }
