package localsip_test

import (
	"strconv"
	"testing"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/e2e/harness/phone"
)

// newPhone starts a phone named name for user with agent a as outbound
// proxy (nil: none, it calls contacts directly); over TCP when tcp is set,
// else UDP.
func newPhone(t testing.TB, name, user string, a *agent, tcp bool) *phone.Phone {
	t.Helper()
	proxy := ""
	if a != nil {
		proxy = a.addr()
	}
	return phone.New(t, phone.Config{Name: name, User: user, Domain: overlay, Proxy: proxy, TCP: tcp,
		Log: testLog(t).With().Str("phone", name).Logger()})
}

func aorURI(user string) sip.Uri { return phone.URI(user, overlay) }

func sipgoAnswer() sipgo.AnswerOptions { return sipgo.AnswerOptions{} }

func sipgoAnswerHook(f func(*sip.Response)) sipgo.AnswerOptions {
	return sipgo.AnswerOptions{OnResponse: func(res *sip.Response) error { f(res); return nil }}
}

func itoa(n int) string { return strconv.Itoa(n) }
