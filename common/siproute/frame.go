package siproute

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/emiago/sipgo/sip"
)

// crlf2 ends a SIP header section.
var crlf2 = []byte("\r\n\r\n")

// checkFrame makes one tunnel payload safe to write into a virtual stream
// connection. sipgo's stream parser finds message ends by Content-Length
// alone and closes the connection on any framing error, so a single bad
// payload would otherwise kill every transaction with that peer. A payload
// must be exactly one message: headers, a blank line and a body whose
// length matches its Content-Length. A missing Content-Length is added when
// the body is empty; with a body it is an error (the stream cannot be
// re-synchronised). The returned slice may alias p.
func checkFrame(p []byte) ([]byte, error) {
	if len(p) > sip.ParseMaxMessageLength {
		return nil, fmt.Errorf("%d bytes: %w", len(p), errTooLarge)
	}
	end := bytes.Index(p, crlf2)
	if end < 0 {
		return nil, fmt.Errorf("no end of headers: %w", errFraming)
	}
	first := bytes.IndexByte(p, '\n')
	if !validStartLine(p[:first+1]) {
		return nil, fmt.Errorf("bad start line: %w", errFraming)
	}
	body := len(p) - end - len(crlf2)
	n, found, err := contentLength(p[first+1 : end+2])
	if err != nil {
		return nil, err
	}
	switch {
	case found && n != body:
		return nil, fmt.Errorf("content-length %d, body %d: %w", n, body, errFraming)
	case found:
		return p, nil
	case body > 0:
		return nil, fmt.Errorf("body without content-length: %w", errFraming)
	}
	out := make([]byte, 0, len(p)+len("Content-Length: 0\r\n"))
	out = append(out, p[:end+2]...)
	out = append(out, "Content-Length: 0\r\n\r\n"...)
	return out, nil
}

// validStartLine accepts "SIP/2.0 NNN ...\r\n" and "METHOD uri SIP/2.0\r\n",
// which is what the stream parser needs to start a message; anything else
// would make it fail and drop the connection.
func validStartLine(l []byte) bool {
	if !bytes.HasSuffix(l, []byte("\r\n")) {
		return false
	}
	l = l[:len(l)-2]
	if bytes.HasPrefix(l, []byte("SIP/2.0 ")) {
		return len(l) >= 11 && isDigits(l[8:11])
	}
	return bytes.HasSuffix(l, []byte(" SIP/2.0")) && bytes.Count(l, []byte(" ")) == 2
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// contentLength finds the Content-Length (or compact "l") header in a
// header block of CRLF-terminated lines.
func contentLength(hdrs []byte) (n int, found bool, err error) {
	for len(hdrs) > 0 {
		i := bytes.Index(hdrs, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := hdrs[:i]
		hdrs = hdrs[i+2:]
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name := bytes.TrimSpace(line[:colon])
		if !bytes.EqualFold(name, []byte("content-length")) && !bytes.EqualFold(name, []byte("l")) {
			continue
		}
		v, perr := strconv.Atoi(string(bytes.TrimSpace(line[colon+1:])))
		if perr != nil || v < 0 {
			return 0, false, fmt.Errorf("content-length %q: %w", line[colon+1:], errFraming)
		}
		return v, true, nil
	}
	return 0, false, nil
}
