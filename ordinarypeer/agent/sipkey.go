package agent

import "bytes"

// txKey returns the transaction key of one whole SIP message as the
// tunnel carries it: the top Via's branch and the CSeq method (a CANCEL
// shares its INVITE's branch, RFC 3261 §9.1). A response carries the key
// of the request it answers, so a request sent over the overlay is
// "answered" by the first response with its key. isRequest tells which
// the message is and method is the request's method ("" for responses).
// ok is false when the message has no usable Via branch or CSeq: it is
// then not tracked (the timeout fallback leaves it alone).
//
// This is a deliberately small scan, not a SIP parser: the router has
// parsed and re-serialized every message it tunnels, so the headers are
// well formed; only the header section is read.
func txKey(msg []byte) (key string, isRequest bool, method string, ok bool) {
	// It runs twice for every tunnelled message (sent and received):
	// byte slices throughout, one allocation for the key.
	end := bytes.Index(msg, crlfcrlf)
	if end < 0 {
		end = len(msg)
	}
	head := msg[:end]
	nl := bytes.Index(head, crlf)
	if nl < 0 {
		return "", false, "", false
	}
	first := head[:nl]
	isRequest = !bytes.HasPrefix(first, sipSlash)
	var methodB []byte
	if isRequest {
		sp := bytes.IndexByte(first, ' ')
		if sp <= 0 {
			return "", false, "", false
		}
		methodB = first[:sp]
	}
	var branch, cseqMethod []byte
	for rest := head[nl+2:]; len(rest) > 0 && (branch == nil || cseqMethod == nil); {
		var line []byte
		if i := bytes.Index(rest, crlf); i >= 0 {
			line, rest = rest[:i], rest[i+2:]
		} else {
			line, rest = rest, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := bytes.TrimSpace(line[:colon])
		val := line[colon+1:]
		switch {
		case branch == nil && (bytes.EqualFold(name, hVia) || bytes.EqualFold(name, hV)):
			// The top Via is the first Via header's first value.
			if c := bytes.IndexByte(val, ','); c >= 0 {
				val = val[:c]
			}
			if branch = viaBranch(val); len(branch) == 0 {
				return "", false, "", false
			}
		case cseqMethod == nil && bytes.EqualFold(name, hCSeq):
			// "CSeq: 7 INVITE": a number, then the method.
			num, m, found := bytes.Cut(bytes.TrimSpace(val), []byte(" "))
			m = bytes.TrimSpace(m)
			if !found || len(num) == 0 || len(m) == 0 || bytes.ContainsAny(m, " \t") {
				return "", false, "", false
			}
			cseqMethod = m
		}
	}
	if branch == nil || cseqMethod == nil {
		return "", false, "", false
	}
	if isRequest {
		method = knownMethod(methodB)
	}
	return string(branch) + " " + string(cseqMethod), isRequest, method, true
}

var (
	crlf, crlfcrlf      = []byte("\r\n"), []byte("\r\n\r\n")
	sipSlash            = []byte("SIP/")
	hVia, hV, hCSeq     = []byte("Via"), []byte("v"), []byte("CSeq")
	branchParam         = []byte("branch")
	methodsWithoutAlloc = []string{"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "REGISTER",
		"INFO", "UPDATE", "PRACK", "SUBSCRIBE", "NOTIFY", "REFER", "PUBLISH"}
)

// knownMethod returns m as a string, without allocating for the usual
// methods.
func knownMethod(m []byte) string {
	for _, k := range methodsWithoutAlloc {
		if string(m) == k {
			return k
		}
	}
	return string(m)
}

// viaBranch returns the branch parameter of one Via value (nil if none).
func viaBranch(via []byte) []byte {
	_, rest, _ := bytes.Cut(via, []byte(";"))
	for len(rest) > 0 {
		var p []byte
		p, rest, _ = bytes.Cut(rest, []byte(";"))
		k, v, _ := bytes.Cut(bytes.TrimSpace(p), []byte("="))
		if bytes.EqualFold(k, branchParam) {
			if v = bytes.TrimSpace(v); len(v) > 0 {
				return v
			}
			return nil
		}
	}
	return nil
}
