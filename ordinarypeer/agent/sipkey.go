package agent

import (
	"bytes"
	"strings"
)

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
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 {
		end = len(msg)
	}
	head := msg[:end]
	nl := bytes.Index(head, []byte("\r\n"))
	if nl < 0 {
		return "", false, "", false
	}
	first := head[:nl]
	isRequest = !bytes.HasPrefix(first, []byte("SIP/"))
	if isRequest {
		sp := bytes.IndexByte(first, ' ')
		if sp <= 0 {
			return "", false, "", false
		}
		method = string(first[:sp])
	}
	var branch, cseqMethod string
	for rest := head[nl+2:]; len(rest) > 0 && (branch == "" || cseqMethod == ""); {
		var line []byte
		if i := bytes.Index(rest, []byte("\r\n")); i >= 0 {
			line, rest = rest[:i], rest[i+2:]
		} else {
			line, rest = rest, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := strings.TrimSpace(string(line[:colon]))
		val := string(line[colon+1:])
		switch {
		case branch == "" && (strings.EqualFold(name, "Via") || strings.EqualFold(name, "v")):
			// The top Via is the first Via header's first value.
			if c := strings.IndexByte(val, ','); c >= 0 {
				val = val[:c]
			}
			b := viaBranch(val)
			if b == "" {
				return "", false, "", false
			}
			branch = b
		case cseqMethod == "" && strings.EqualFold(name, "CSeq"):
			f := strings.Fields(val)
			if len(f) != 2 {
				return "", false, "", false
			}
			cseqMethod = f[1]
		}
	}
	if branch == "" || cseqMethod == "" {
		return "", false, "", false
	}
	return branch + " " + cseqMethod, isRequest, method, true
}

// viaBranch returns the branch parameter of one Via value.
func viaBranch(via string) string {
	for _, p := range strings.Split(via, ";")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(k, "branch") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
