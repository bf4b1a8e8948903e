package agent

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestTxKey(t *testing.T) {
	const inv = "INVITE sip:bob@x SIP/2.0\r\n" +
		"Via: SIP/2.0/TLS 100.64.0.1:5061;branch=z9hG4bK.a1;rport, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK.zz\r\n" +
		"Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK.b2\r\n" +
		"CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
	const trying = "SIP/2.0 100 Trying\r\nv: SIP/2.0/TLS 100.64.0.1:5061;rport;BRANCH=z9hG4bK.a1\r\ncseq: 7 INVITE\r\n\r\n"
	const cancel = "CANCEL sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TLS 100.64.0.1:5061;branch=z9hG4bK.a1\r\nCSeq: 7 CANCEL\r\n\r\n"
	const body = "MESSAGE sip:bob@x SIP/2.0\r\nCSeq: 1 MESSAGE\r\nContent-Length: 30\r\n\r\nVia: SIP/2.0/UDP h;branch=fake"
	for _, tc := range []struct {
		name, msg, key, method string
		req, ok                bool
	}{
		{"invite", inv, "z9hG4bK.a1 INVITE", "INVITE", true, true},
		{"its 100 Trying, compact and lower-case", trying, "z9hG4bK.a1 INVITE", "", false, true},
		{"cancel shares the branch, not the key", cancel, "z9hG4bK.a1 CANCEL", "CANCEL", true, true},
		{"no Via in the headers (one in the body)", body, "", "", false, false},
		{"no branch", "BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCSeq: 2 BYE\r\n\r\n", "", "", false, false},
		{"no CSeq", "BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "", "", false, false},
		{"bad CSeq", "BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: BYE\r\n\r\n", "", "", false, false},
		{"one line", "BYE sip:x SIP/2.0", "", "", false, false},
		{"empty", "", "", "", false, false},
	} {
		key, req, method, ok := txKey([]byte(tc.msg))
		if ok != tc.ok || (ok && (key != tc.key || req != tc.req || method != tc.method)) {
			t.Errorf("%s: txKey = %q, %t, %q, %t; want %q, %t, %q, %t", tc.name, key, req, method, ok, tc.key, tc.req, tc.method, tc.ok)
		}
	}
}

// BenchmarkTxKey: txKey runs twice per tunnelled message.
func BenchmarkTxKey(b *testing.B) {
	msg := []byte("INVITE sip:bob@x SIP/2.0\r\n" +
		"Via: SIP/2.0/TLS 100.64.0.1:5061;branch=z9hG4bK.a1xxxxxxxxxxxxxxx;rport\r\n" +
		"Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK.b2\r\n" +
		"Record-Route: <sip:abc@1.2.3.4;lr>\r\nFrom: <sip:alice@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: 123\r\n" +
		"CSeq: 7 INVITE\r\nContact: <sip:a@1.2.3.4>\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n")
	b.ReportAllocs()
	for range b.N {
		txKey(msg)
	}
}

// FuzzTxKey: txKey reads payloads other peers tunnel to this agent. It
// must never panic, and when it finds a key it must be the one sipgo,
// which matches the transaction, would: the top Via's branch and the CSeq
// method, for a message sipgo parses to a single top Via value.
func FuzzTxKey(f *testing.F) {
	for _, s := range []string{
		"INVITE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TLS 100.64.0.1:5061;branch=z9hG4bK.a1;rport\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
		"SIP/2.0 100 Trying\r\nv: SIP/2.0/TLS 100.64.0.1:5061;rport;BRANCH=z9hG4bK.a1\r\ncseq: 7 INVITE\r\n\r\n",
		"BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: BYE\r\n\r\n",
		"MESSAGE sip:bob@x SIP/2.0\r\nCSeq: 1 MESSAGE\r\nContent-Length: 30\r\n\r\nVia: SIP/2.0/UDP h;branch=fake",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		key, isReq, method, ok := txKey(msg)
		if !ok {
			if key != "" || method != "" {
				t.Fatalf("not ok but key %q method %q", key, method)
			}
			return
		}
		branch, cseqMethod, found := strings.Cut(key, " ")
		if !found || branch == "" || cseqMethod == "" {
			t.Fatalf("key %q is not branch and method", key)
		}
		if isReq && method == "" {
			t.Fatalf("request without a method: %q", msg)
		}
		m, err := sip.ParseMessage(msg)
		if err != nil {
			return // sipgo drops it before any transaction
		}
		via, cseq := m.Via(), m.CSeq()
		if via == nil || cseq == nil {
			return
		}
		b, _ := via.Params.Get("branch")
		if want := b + " " + string(cseq.MethodName); b != "" && key != want {
			t.Fatalf("txKey %q, sipgo's transaction key %q for:\n%q", key, want, msg)
		}
	})
}
