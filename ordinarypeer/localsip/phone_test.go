package localsip_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/logx"
)

var sdp = []byte("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")

// behaviour is how a phone answers an INVITE.
type behaviour func(p *phone, req *sip.Request, tx sip.ServerTransaction)

// phone is a sipgo softphone on loopback: a UAS/UAC with dialog caches,
// using its agent as outbound proxy.
type phone struct {
	t       testing.TB
	name    string
	aor     sip.Uri
	agent   *agent
	tcp     bool
	ua      *sipgo.UserAgent
	cli     *sipgo.Client
	addr    string
	contact sip.ContactHeader
	calls   *sipgo.DialogClientCache
	answers *sipgo.DialogServerCache

	behave   atomic.Pointer[behaviour]
	invites  atomic.Int32
	cancels  atomic.Int32
	acks     atomic.Int32
	byes     atomic.Int32
	lastInv  atomic.Pointer[sip.Request]
	regCall  string
	regCSeq  uint32
	regMu    sync.Mutex
	canceled chan struct{} // closed on the first CANCEL seen
	cancelMu sync.Once
}

// newPhone starts a phone named name for user at agent a; over TCP when
// tcp is set (it then keeps one connection to the agent), else UDP.
func newPhone(t testing.TB, name, user string, a *agent, tcp bool) *phone {
	t.Helper()
	slog := logx.Slog(testLog(t).With().Str("phone", name).Logger().Level(warnOrDebug()))
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(name), sipgo.WithUserAgentHostname(overlay),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slog),
			// A 180 overtaken by its 200 arrives after the transaction
			// left "Calling"; sipgo would log each one.
			sip.WithTransactionLayerUnhandledResponseHandler(func(*sip.Response) {})))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slog))
	if err != nil {
		t.Fatal(err)
	}
	p := &phone{t: t, name: name, agent: a, tcp: tcp, ua: ua, canceled: make(chan struct{}),
		aor:     sip.Uri{Scheme: "sip", User: user, Host: overlay},
		regCall: name + "-reg-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	var serve func() error
	var closer func() error
	if tcp {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.addr = ln.Addr().String()
		serve, closer = func() error { return srv.ServeTCP(ln) }, ln.Close
		p.cli, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(slog))
	} else {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.addr = pc.LocalAddr().String()
		serve, closer = func() error { return srv.ServeUDP(pc) }, pc.Close
		// Send from the listening socket, as a phone behind NAT must.
		p.cli, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"),
			sipgo.WithClientConnectionAddr(p.addr), sipgo.WithClientLogger(slog))
	}
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := sip.ParseAddr(p.addr)
	p.contact = sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: name, Host: host, Port: port}}
	if tcp {
		p.contact.Address.UriParams = sip.HeaderParams{{K: "transport", V: "tcp"}}
	}
	p.calls = sipgo.NewDialogClientCache(p.cli, p.contact)
	p.answers = sipgo.NewDialogServerCache(p.cli, p.contact)
	// A little ring time: sipgo handles each message in a goroutine of its own,
	// so a 200 sent right after the 180 may overtake it anywhere on the path.
	b := answer(20*time.Millisecond, 200)
	p.behave.Store(&b)
	srv.OnInvite(p.onInvite)
	srv.OnAck(p.onAck)
	srv.OnBye(p.onBye)
	srv.OnOptions(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil)) //nolint:errcheck
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve() //nolint:errcheck // ends when closed
	}()
	t.Cleanup(func() {
		// Listener first: a message read after ua.Close would make sipgo
		// open a new socket for its response, which nothing closes.
		closer()
		<-done
		ua.Close()
		drainPools(ua.TransportLayer())
	})
	if !tcp {
		eventually(t, 2*time.Second, "phone listening", func() bool { return ua.TransportLayer().Pool("udp").Size() > 0 })
	}
	return p
}

// warnOrDebug keeps the phones quiet unless debugging.
func warnOrDebug() zerolog.Level {
	if testLevel() == zerolog.DebugLevel {
		return zerolog.DebugLevel
	}
	return zerolog.WarnLevel
}

func (p *phone) setBehaviour(b behaviour) { p.behave.Store(&b) }

func (p *phone) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	p.invites.Add(1)
	p.lastInv.Store(req)
	tx.OnCancel(func(*sip.Request) {
		p.cancels.Add(1)
		p.cancelMu.Do(func() { close(p.canceled) })
	})
	(*p.behave.Load())(p, req, tx)
}

func (p *phone) onAck(req *sip.Request, tx sip.ServerTransaction) {
	p.acks.Add(1)
	p.answers.ReadAck(req, tx) //nolint:errcheck // a stray ACK is fine
}

func (p *phone) onBye(req *sip.Request, tx sip.ServerTransaction) {
	p.byes.Add(1)
	if err := p.answers.ReadBye(req, tx); err == nil {
		return
	}
	if err := p.calls.ReadBye(req, tx); err == nil {
		return
	}
	tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil)) //nolint:errcheck
}

// answer rings (180), waits ring, then answers code (200 with SDP).
func answer(ring time.Duration, code int) behaviour {
	return func(p *phone, req *sip.Request, tx sip.ServerTransaction) {
		d, err := p.answers.ReadInvite(req, tx)
		if err != nil {
			p.t.Errorf("%s: read invite: %v", p.name, err)
			return
		}
		// The dialog stays in the cache until BYE (ReadBye closes it).
		if err := d.Respond(180, "Ringing", nil); err != nil {
			d.Close()
			return
		}
		if ring > 0 {
			select {
			case <-time.After(ring):
			case <-tx.Done():
				d.Close()
				return
			case <-p.canceled:
				d.Close()
				return
			}
		}
		if code == 200 {
			d.RespondSDP(sdp) //nolint:errcheck // waits for the ACK
			return
		}
		d.Respond(code, "Busy", nil) //nolint:errcheck
		d.Close()
	}
}

// ringForever rings until cancelled (sipgo then answers 487 itself).
func ringForever(p *phone, req *sip.Request, tx sip.ServerTransaction) {
	d, err := p.answers.ReadInvite(req, tx)
	if err != nil {
		return
	}
	defer d.Close()
	d.Respond(180, "Ringing", nil) //nolint:errcheck
	select {
	case <-p.canceled:
	case <-tx.Done():
	case <-time.After(20 * time.Second):
	}
}

// outbound is the preloaded Route to the phone's agent; nil for a phone
// without agent (it calls contacts directly).
func (p *phone) outbound() *sip.RouteHeader {
	if p.agent == nil {
		return nil
	}
	u := sip.Uri{Scheme: "sip", Host: "127.0.0.1", Port: p.agent.port, UriParams: sip.HeaderParams{{K: "lr"}}}
	if p.tcp {
		u.UriParams.Add("transport", "tcp")
	}
	return &sip.RouteHeader{Address: u}
}

// invite starts a call to target through the agent.
func (p *phone) invite(ctx context.Context, target sip.Uri, hdrs ...sip.Header) (*sipgo.DialogClientSession, error) {
	req := sip.NewRequest(sip.INVITE, target)
	from := sip.FromHeader{Address: p.aor, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: target})
	if r := p.outbound(); r != nil {
		req.AppendHeader(r)
	}
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	for _, h := range hdrs {
		req.AppendHeader(h)
	}
	req.SetBody(sdp)
	if p.tcp {
		req.SetTransport("TCP")
	}
	return p.calls.WriteInvite(ctx, req)
}

// call places a whole call: INVITE, answer, ACK, BYE; it returns the
// response codes the caller saw.
func (p *phone) call(ctx context.Context, target sip.Uri) ([]int, error) {
	s, err := p.invite(ctx, target)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var codes []int
	err = s.WaitAnswer(ctx, sipgo.AnswerOptions{OnResponse: func(res *sip.Response) error {
		codes = append(codes, res.StatusCode)
		return nil
	}})
	if err != nil {
		return codes, err
	}
	if err := s.Ack(ctx); err != nil {
		return codes, err
	}
	return codes, s.Bye(ctx)
}

// register sends REGISTER for the phone's AoR with its contact; the
// Call-ID stays and the CSeq grows, as a phone's refreshes do.
func (p *phone) register(ctx context.Context, expires int, hdrs ...sip.Header) (*sip.Response, error) {
	p.regMu.Lock()
	p.regCSeq++
	cseq := p.regCSeq
	p.regMu.Unlock()
	req := p.newRegister(p.regCall, cseq)
	c := p.contact.Clone()
	req.AppendHeader(c)
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	for _, h := range hdrs {
		req.AppendHeader(h)
	}
	return p.do(ctx, req)
}

// newRegister is a REGISTER for the phone's AoR without Contact.
func (p *phone) newRegister(callID string, cseq uint32) *sip.Request {
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: overlay})
	from := sip.FromHeader{Address: p.aor, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: p.aor})
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.REGISTER})
	return req
}

// do sends a request to the phone's agent and returns the final response.
func (p *phone) do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	req.SetDestination(p.agent.addr())
	if p.tcp {
		req.SetTransport("TCP")
	}
	if req.Body() == nil {
		req.SetBody(nil)
	}
	return p.cli.Do(ctx, req)
}

func mustRegister(t testing.TB, p *phone) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := p.register(ctx, 600)
	if err != nil {
		t.Fatalf("%s: register: %v", p.name, err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("%s: register: %s", p.name, res.StartLine())
	}
}

func aorURI(user string) sip.Uri { return sip.Uri{Scheme: "sip", User: user, Host: overlay} }

func responseCode(err error) int {
	var de *sipgo.ErrDialogResponse
	if errors.As(err, &de) {
		return de.Res.StatusCode
	}
	return 0
}

func sipgoAnswer() sipgo.AnswerOptions { return sipgo.AnswerOptions{} }

func sipgoAnswerHook(f func(*sip.Response)) sipgo.AnswerOptions {
	return sipgo.AnswerOptions{OnResponse: func(res *sip.Response) error { f(res); return nil }}
}

func itoa(n int) string { return strconv.Itoa(n) }

// drainPools closes sockets sipgo opened after its UA was closed (a message
// read just before the listener closed is handled in a goroutine that may
// run later and open a socket for its answer); siproute does the same.
func drainPools(tp *sip.TransportLayer) {
	quiet := 0
	for range 40 {
		n := 0
		for _, network := range []string{"udp", "tcp"} {
			if p := tp.Pool(network); p.Size() > 0 {
				n += p.Size()
				p.Clear() //nolint:errcheck
			}
		}
		if n == 0 {
			if quiet++; quiet == 4 {
				return
			}
		} else {
			quiet = 0
		}
		time.Sleep(5 * time.Millisecond)
	}
}
