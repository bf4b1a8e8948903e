package siproute

import (
	"errors"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func TestCheckFrame(t *testing.T) {
	for name, tc := range map[string]struct {
		in, want string // want "" means unchanged
		err      error
	}{
		"request":          {in: crlf("BYE sip:a@b SIP/2.0\nCall-ID: x\nContent-Length: 0\n\n")},
		"response body":    {in: crlf("SIP/2.0 200 OK\nl: 3\n\n") + "abc"},
		"added length":     {in: crlf("ACK sip:a@b SIP/2.0\nCall-ID: x\n\n"), want: crlf("ACK sip:a@b SIP/2.0\nCall-ID: x\nContent-Length: 0\n\n")},
		"body no length":   {in: crlf("MESSAGE sip:a@b SIP/2.0\n\n") + "hi", err: errFraming},
		"length mismatch":  {in: crlf("MESSAGE sip:a@b SIP/2.0\nContent-Length: 5\n\n") + "hi", err: errFraming},
		"two messages":     {in: crlf("ACK sip:a@b SIP/2.0\nContent-Length: 0\n\nACK sip:a@b SIP/2.0\nContent-Length: 0\n\n"), err: errFraming},
		"bad length":       {in: crlf("ACK sip:a@b SIP/2.0\nContent-Length: -1\n\n"), err: errFraming},
		"no header end":    {in: crlf("ACK sip:a@b SIP/2.0\nContent-Length: 0\n"), err: errFraming},
		"bad start":        {in: crlf("HELLO\nContent-Length: 0\n\n"), err: errFraming},
		"bad status":       {in: crlf("SIP/2.0 2x0 OK\nContent-Length: 0\n\n"), err: errFraming},
		"leading crlf":     {in: crlf("\nACK sip:a@b SIP/2.0\nContent-Length: 0\n\n"), err: errFraming},
		"keepalive":        {in: "\r\n\r\n", err: errFraming},
		"too large":        {in: crlf("MESSAGE sip:a@b SIP/2.0\nContent-Length: 70000\n\n") + strings.Repeat("x", 70000), err: errTooLarge},
		"compact and case": {in: crlf("INFO sip:a@b SIP/2.0\nCONTENT-LENGTH : 2\n\n") + "ok"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := checkFrame([]byte(tc.in))
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			want := tc.want
			if want == "" {
				want = tc.in
			}
			if string(got) != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if _, err := sip.ParseMessage(got); err != nil {
				t.Errorf("sipgo cannot parse the result: %v", err)
			}
		})
	}
}

// FuzzCheckFrame: whatever checkFrame accepts, sipgo's stream parser reads
// as exactly one message with nothing left over — the property that keeps
// one peer's bad payload from breaking its virtual connection.
func FuzzCheckFrame(f *testing.F) {
	f.Add([]byte(crlf("BYE sip:a@b SIP/2.0\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\nCall-ID: x\nCSeq: 1 BYE\nContent-Length: 0\n\n")))
	f.Add([]byte(crlf("SIP/2.0 200 OK\nl: 3\n\n") + "abc"))
	f.Add([]byte(crlf("ACK sip:a@b SIP/2.0\n\n")))
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, p []byte) {
		out, err := checkFrame(p)
		if err != nil {
			return
		}
		var n int
		perr := sip.NewParser().NewSIPStream().ParseSIPStream(out, func(sip.Message) { n++ })
		if perr == nil && n != 1 {
			t.Fatalf("accepted payload parsed as %d messages", n)
		}
		if errors.Is(perr, sip.ErrParseSipPartial) {
			t.Fatalf("accepted payload leaves the stream waiting for more: %q", out)
		}
	})
}
