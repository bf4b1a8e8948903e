// Package phone is a sipgo softphone for tests: a UAC/UAS on loopback
// with dialog caches that uses an agent (or any SIP proxy) as outbound
// proxy. It registers, places whole calls (INVITE → 180/200 → ACK → BYE),
// answers according to a Behaviour (ring and answer, busy, ring until
// cancelled) and counts the INVITE, CANCEL, ACK and BYE requests it gets.
// Everything it opens is closed at test cleanup.
package phone

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

// SDP is the session description every phone offers and answers with.
var SDP = []byte("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")

// Config describes one phone.
type Config struct {
	// Name is the phone's User-Agent and the user part of its Contact.
	Name string
	// User and Domain make its address of record, sip:User@Domain.
	User, Domain string
	// Proxy is the outbound proxy (host:port) every request goes to: the
	// agent's SIP address. Empty for a phone that calls contacts directly
	// (it cannot register then).
	Proxy string
	// TCP makes the phone use one TCP connection to its proxy; else UDP
	// from its listening socket, as a phone behind NAT must.
	TCP bool
	// Log receives the phone's and sipgo's lines; sipgo's are kept at warn
	// unless Log is at debug level. The zero Logger logs nothing.
	Log zerolog.Logger
}

// Behaviour is how a phone answers an INVITE; it runs on sipgo's handler
// goroutine for that request.
type Behaviour func(p *Phone, req *sip.Request, tx sip.ServerTransaction)

// Phone is one softphone. Counters may be read at any time.
type Phone struct {
	T    testing.TB
	Name string
	AoR  sip.Uri
	// Addr is the phone's listening address (host:port).
	Addr string
	// Contact is what Register sends; a test may add parameters before
	// registering.
	Contact sip.ContactHeader
	// Answers and Calls are the dialog caches, for behaviours and tests
	// that drive a dialog by hand.
	Answers *sipgo.DialogServerCache
	Calls   *sipgo.DialogClientCache

	// Requests received, by method.
	Invites, Cancels, Acks, Byes atomic.Int32

	cfg      Config
	cli      *sipgo.Client
	behave   atomic.Pointer[Behaviour]
	lastInv  atomic.Pointer[sip.Request]
	lastAck  atomic.Pointer[sip.Request]
	regCall  string
	regMu    sync.Mutex
	regCSeq  uint32
	canceled chan struct{} // closed on the first CANCEL seen
	cancelMu sync.Once
}

// New starts a phone; it stops at test cleanup. By default it rings for
// 20 ms and answers 200.
func New(t testing.TB, cfg Config) *Phone {
	t.Helper()
	lvl := zerolog.WarnLevel
	if cfg.Log.Debug().Enabled() {
		lvl = zerolog.DebugLevel
	}
	slog := logx.Slog(cfg.Log.With().Str("phone", cfg.Name).Logger().Level(lvl))
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(cfg.Name), sipgo.WithUserAgentHostname(cfg.Domain),
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
	p := &Phone{T: t, Name: cfg.Name, cfg: cfg, canceled: make(chan struct{}),
		AoR:     URI(cfg.User, cfg.Domain),
		regCall: cfg.Name + "-reg-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	var serve, closer func() error
	if cfg.TCP {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.Addr = ln.Addr().String()
		serve, closer = func() error { return srv.ServeTCP(ln) }, ln.Close
		if p.cli, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(slog)); err != nil {
			t.Fatal(err)
		}
	} else {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.Addr = pc.LocalAddr().String()
		serve, closer = func() error { return srv.ServeUDP(pc) }, pc.Close
		// Send from the listening socket, as a phone behind NAT must.
		if p.cli, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"),
			sipgo.WithClientConnectionAddr(p.Addr), sipgo.WithClientLogger(slog)); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := sip.ParseAddr(p.Addr)
	p.Contact = sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: cfg.Name, Host: host, Port: port}}
	if cfg.TCP {
		p.Contact.Address.UriParams = sip.HeaderParams{{K: "transport", V: "tcp"}}
	}
	p.Calls = sipgo.NewDialogClientCache(p.cli, p.Contact)
	p.Answers = sipgo.NewDialogServerCache(p.cli, p.Contact)
	// A little ring time: sipgo handles each message in a goroutine of its
	// own, so a 200 sent right after the 180 may overtake it on the path.
	p.SetBehaviour(Answer(20*time.Millisecond, 200))
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
		closer() //nolint:errcheck
		<-done
		ua.Close() //nolint:errcheck
		DrainPools(ua.TransportLayer())
	})
	if !cfg.TCP {
		deadline := time.Now().Add(5 * time.Second)
		for ua.TransportLayer().Pool("udp").Size() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("phone %s: not listening after 5s", cfg.Name)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return p
}

// SetBehaviour changes how the phone answers INVITEs.
func (p *Phone) SetBehaviour(b Behaviour) { p.behave.Store(&b) }

// LastInvite is the last INVITE received (nil before the first).
func (p *Phone) LastInvite() *sip.Request { return p.lastInv.Load() }

// LastAck is the last ACK received (nil before the first).
func (p *Phone) LastAck() *sip.Request { return p.lastAck.Load() }

// Canceled is closed when the phone sees its first CANCEL.
func (p *Phone) Canceled() <-chan struct{} { return p.canceled }

func (p *Phone) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	p.Invites.Add(1)
	p.lastInv.Store(req)
	tx.OnCancel(func(*sip.Request) {
		p.Cancels.Add(1)
		p.cancelMu.Do(func() { close(p.canceled) })
	})
	(*p.behave.Load())(p, req, tx)
}

func (p *Phone) onAck(req *sip.Request, tx sip.ServerTransaction) {
	p.Acks.Add(1)
	p.lastAck.Store(req)
	p.Answers.ReadAck(req, tx) //nolint:errcheck // a stray ACK is fine
}

func (p *Phone) onBye(req *sip.Request, tx sip.ServerTransaction) {
	p.Byes.Add(1)
	if err := p.Answers.ReadBye(req, tx); err == nil {
		return
	}
	if err := p.Calls.ReadBye(req, tx); err == nil {
		return
	}
	tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil)) //nolint:errcheck
}

// Answer rings (180), waits ring, then answers code: 200 with SDP (the
// dialog then waits for ACK and BYE), anything else as a final error
// (486 for busy, say).
func Answer(ring time.Duration, code int) Behaviour {
	return func(p *Phone, req *sip.Request, tx sip.ServerTransaction) {
		d, err := p.Answers.ReadInvite(req, tx)
		if err != nil {
			p.T.Errorf("%s: read invite: %v", p.Name, err)
			return
		}
		// The dialog stays in the cache until BYE (ReadBye closes it).
		if err := d.Respond(180, "Ringing", nil); err != nil {
			d.Close() //nolint:errcheck
			return
		}
		if ring > 0 {
			select {
			case <-time.After(ring):
			case <-tx.Done():
				d.Close() //nolint:errcheck
				return
			case <-p.canceled:
				d.Close() //nolint:errcheck
				return
			}
		}
		if code == 200 {
			d.RespondSDP(SDP) //nolint:errcheck // waits for the ACK
			return
		}
		d.Respond(code, reason(code), nil) //nolint:errcheck
		d.Close()                          //nolint:errcheck
	}
}

func reason(code int) string {
	switch code {
	case 486:
		return "Busy Here"
	case 480:
		return "Temporarily Unavailable"
	case 603:
		return "Decline"
	}
	return "Error"
}

// RingForever rings until cancelled (sipgo then answers 487 itself), or
// gives up after 20 s: a phone nobody picks up.
func RingForever(p *Phone, req *sip.Request, tx sip.ServerTransaction) {
	d, err := p.Answers.ReadInvite(req, tx)
	if err != nil {
		return
	}
	defer d.Close()                //nolint:errcheck
	d.Respond(180, "Ringing", nil) //nolint:errcheck
	select {
	case <-p.canceled:
	case <-tx.Done():
	case <-time.After(20 * time.Second):
	}
}

// outbound is the preloaded Route to the phone's proxy; nil without one.
func (p *Phone) outbound() *sip.RouteHeader {
	if p.cfg.Proxy == "" {
		return nil
	}
	host, port, err := sip.ParseAddr(p.cfg.Proxy)
	if err != nil {
		p.T.Fatalf("%s: proxy %q: %v", p.Name, p.cfg.Proxy, err)
	}
	u := sip.Uri{Scheme: "sip", Host: host, Port: port, UriParams: sip.HeaderParams{{K: "lr"}}}
	if p.cfg.TCP {
		u.UriParams.Add("transport", "tcp")
	}
	return &sip.RouteHeader{Address: u}
}

// Invite starts a call to target through the proxy; the caller waits for
// the answer on the returned session.
func (p *Phone) Invite(ctx context.Context, target sip.Uri, hdrs ...sip.Header) (*sipgo.DialogClientSession, error) {
	req := sip.NewRequest(sip.INVITE, target)
	from := sip.FromHeader{Address: p.AoR, Params: sip.NewParams()}
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
	req.SetBody(SDP)
	if p.cfg.TCP {
		req.SetTransport("TCP")
	}
	return p.Calls.WriteInvite(ctx, req)
}

// Call places a whole call: INVITE, answer, ACK, BYE. It returns the
// response codes the caller saw to its INVITE; a final error response
// comes back as a *sipgo.ErrDialogResponse (see ResponseCode).
func (p *Phone) Call(ctx context.Context, target sip.Uri) ([]int, error) {
	s, err := p.Invite(ctx, target)
	if err != nil {
		return nil, err
	}
	defer s.Close() //nolint:errcheck
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

// Register sends REGISTER for the phone's AoR with its Contact; the
// Call-ID stays and the CSeq grows, as a phone's refreshes do.
func (p *Phone) Register(ctx context.Context, expires int, hdrs ...sip.Header) (*sip.Response, error) {
	req := p.NextRegister()
	req.AppendHeader(p.Contact.Clone())
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	for _, h := range hdrs {
		req.AppendHeader(h)
	}
	return p.Do(ctx, req)
}

// NextRegister is the phone's next REGISTER (its Call-ID, the next CSeq)
// without Contact or Expires.
func (p *Phone) NextRegister() *sip.Request {
	p.regMu.Lock()
	p.regCSeq++
	cseq := p.regCSeq
	p.regMu.Unlock()
	return p.NewRegister(p.regCall, cseq)
}

// RegisterCallID is the Call-ID of the phone's registrations.
func (p *Phone) RegisterCallID() string { return p.regCall }

// NewRegister is a REGISTER for the phone's AoR with the given Call-ID and
// CSeq, without Contact.
func (p *Phone) NewRegister(callID string, cseq uint32) *sip.Request {
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: p.AoR.Host})
	from := sip.FromHeader{Address: p.AoR, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: p.AoR})
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.REGISTER})
	return req
}

// Do sends a request to the proxy and returns the final response.
func (p *Phone) Do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	if p.cfg.Proxy == "" {
		return nil, errors.New("phone: no proxy to send to")
	}
	req.SetDestination(p.cfg.Proxy)
	if p.cfg.TCP {
		req.SetTransport("TCP")
	}
	if req.Body() == nil {
		req.SetBody(nil)
	}
	return p.cli.Do(ctx, req)
}

// MustRegister registers p for 600 s and fails the test unless it gets 200.
func MustRegister(t testing.TB, p *Phone) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := p.Register(ctx, 600)
	if err != nil {
		t.Fatalf("%s: register: %v", p.Name, err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("%s: register: %s", p.Name, res.StartLine())
	}
}

// URI is sip:user@domain.
func URI(user, domain string) sip.Uri { return sip.Uri{Scheme: "sip", User: user, Host: domain} }

// ResponseCode is the status of the final error response behind err (from
// Call or WaitAnswer), 0 if err is not one.
func ResponseCode(err error) int {
	var de *sipgo.ErrDialogResponse
	if errors.As(err, &de) {
		return de.Res.StatusCode
	}
	return 0
}

// DrainPools closes sockets sipgo opened after its UA was closed: a
// message read just before the listener closed is handled in a goroutine
// that may run later and open a socket for its answer.
func DrainPools(tp *sip.TransportLayer) {
	quiet := 0
	for range 40 {
		n := 0
		for _, network := range []string{"udp", "tcp"} {
			if p := tp.Pool(network); p != nil && p.Size() > 0 {
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
