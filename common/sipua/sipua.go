// Package sipua is a small SIP user agent that is not a test harness: it
// registers an address of record through an outbound proxy (an agent's
// local SIP server), answers every INVITE (180, then 200 with SDP), and
// places whole calls (INVITE → answer → ACK → BYE). `p2psip demo` uses it
// for its two built-in phones, and the compose e2e test builds it into a
// static phone binary that runs in a FROM scratch container.
package sipua

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/logx"
)

// SDP is the session description the UA offers and answers with: an audio
// line, no media is sent.
func sdp(host string) []byte {
	return []byte("v=0\r\no=- 1 1 IN IP4 " + host + "\r\ns=-\r\nc=IN IP4 " + host +
		"\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
}

// Config describes one UA.
type Config struct {
	// User and Domain make the address of record sip:User@Domain.
	User, Domain string
	// Proxy is the outbound proxy host:port (registrar and every request's
	// first hop), e.g. the agent's --sip-listen.
	Proxy string
	// Listen is the UDP address the UA receives on; empty means an
	// ephemeral port on the address the host routes to Proxy from (the one
	// the proxy can reach us at, also inside a container).
	Listen string
	// Ring is how long an incoming call rings before the UA answers
	// (default 20 ms: a 200 sent right after the 180 could overtake it).
	Ring time.Duration
	// Hold is how long a placed call stays up between ACK and BYE
	// (default 100 ms; negative: hang up at once).
	Hold time.Duration
}

// UA is one running user agent. Close stops it.
type UA struct {
	cfg     Config
	log     zerolog.Logger
	aor     sip.Uri
	addr    string // host:port we listen on
	contact sip.ContactHeader
	ua      *sipgo.UserAgent
	cli     *sipgo.Client
	answers *sipgo.DialogServerCache
	calls   *sipgo.DialogClientCache
	pc      net.PacketConn
	done    chan struct{}

	regCallID string
	regCSeq   atomic.Uint32
	answered  atomic.Int64
	closeOnce sync.Once
}

// New starts a UA listening on cfg.Listen. It does not register: call
// Register.
func New(cfg Config, log zerolog.Logger) (*UA, error) {
	if cfg.User == "" || cfg.Domain == "" {
		return nil, errors.New("sipua: user and domain are required")
	}
	if _, _, err := net.SplitHostPort(cfg.Proxy); err != nil {
		return nil, fmt.Errorf("sipua: proxy %q: %w", cfg.Proxy, err)
	}
	if cfg.Ring == 0 {
		cfg.Ring = 20 * time.Millisecond
	}
	if cfg.Hold == 0 {
		cfg.Hold = 100 * time.Millisecond
	}
	listen := cfg.Listen
	if listen == "" {
		ip, err := routeTo(cfg.Proxy)
		if err != nil {
			return nil, err
		}
		listen = net.JoinHostPort(ip, "0")
	}
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return nil, fmt.Errorf("sipua: listen: %w", err)
	}
	u := &UA{cfg: cfg, log: log, pc: pc, done: make(chan struct{}),
		aor:       sip.Uri{Scheme: "sip", User: cfg.User, Host: cfg.Domain},
		addr:      pc.LocalAddr().String(),
		regCallID: cfg.User + "-reg-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	host, port, _ := sip.ParseAddr(u.addr)
	// sipgo logs every retransmission and stray response at info; only
	// its warnings reach our log unless we are at debug.
	slog := logx.Slog(log.Level(max(log.GetLevel(), zerolog.WarnLevel)))
	u.ua, err = sipgo.NewUA(sipgo.WithUserAgent("p2psip-sipua"), sipgo.WithUserAgentHostname(cfg.Domain),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slog),
			sip.WithTransactionLayerUnhandledResponseHandler(func(*sip.Response) {})))
	if err != nil {
		pc.Close() //nolint:errcheck
		return nil, fmt.Errorf("sipua: %w", err)
	}
	srv, err := sipgo.NewServer(u.ua, sipgo.WithServerLogger(slog))
	if err != nil {
		u.ua.Close() //nolint:errcheck
		pc.Close()   //nolint:errcheck
		return nil, fmt.Errorf("sipua: %w", err)
	}
	// Send from the listening socket, as a phone behind NAT must.
	if u.cli, err = sipgo.NewClient(u.ua, sipgo.WithClientHostname(host),
		sipgo.WithClientConnectionAddr(u.addr), sipgo.WithClientLogger(slog)); err != nil {
		u.ua.Close() //nolint:errcheck
		pc.Close()   //nolint:errcheck
		return nil, fmt.Errorf("sipua: %w", err)
	}
	u.contact = sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: cfg.User, Host: host, Port: port}}
	u.calls = sipgo.NewDialogClientCache(u.cli, u.contact)
	u.answers = sipgo.NewDialogServerCache(u.cli, u.contact)
	srv.OnInvite(u.onInvite)
	srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) {
		u.answers.ReadAck(req, tx) //nolint:errcheck // a stray ACK is fine
	})
	srv.OnBye(u.onBye)
	srv.OnOptions(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil)) //nolint:errcheck
	})
	go func() {
		defer close(u.done)
		srv.ServeUDP(pc) //nolint:errcheck // ends when pc closes
	}()
	// sipgo adds the socket to its pool when ServeUDP starts; a request
	// sent before that would go out from another socket.
	deadline := time.Now().Add(5 * time.Second)
	for u.ua.TransportLayer().Pool("udp").Size() == 0 {
		if time.Now().After(deadline) {
			u.Close()
			return nil, errors.New("sipua: UDP listener did not start")
		}
		time.Sleep(2 * time.Millisecond)
	}
	return u, nil
}

// routeTo is the local IP the host sends from towards hostport.
func routeTo(hostport string) (string, error) {
	c, err := net.Dial("udp", hostport)
	if err != nil {
		return "", fmt.Errorf("sipua: no route to proxy %s: %w", hostport, err)
	}
	defer c.Close() //nolint:errcheck
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// AoR is the UA's address of record.
func (u *UA) AoR() sip.Uri { return u.aor }

// Addr is the UA's listening address (host:port).
func (u *UA) Addr() string { return u.addr }

// Answered counts the calls this UA has answered with 200.
func (u *UA) Answered() int64 { return u.answered.Load() }

// Close stops the UA; calls in progress are dropped.
func (u *UA) Close() {
	u.closeOnce.Do(func() {
		// Listener first: a message read after ua.Close would make sipgo
		// open a new socket for its response.
		u.pc.Close() //nolint:errcheck
		<-u.done
		u.ua.Close() //nolint:errcheck
	})
}

func (u *UA) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	d, err := u.answers.ReadInvite(req, tx)
	if err != nil {
		u.log.Warn().Err(err).Msg("incoming INVITE")
		return
	}
	callID := ""
	if h := req.CallID(); h != nil {
		callID = h.Value()
	}
	u.log.Info().Str("call_id", callID).Str("from", req.From().Address.String()).Msg("incoming call")
	if err := d.Respond(180, "Ringing", nil); err != nil {
		d.Close() //nolint:errcheck
		return
	}
	select {
	case <-time.After(u.cfg.Ring):
	case <-tx.Done():
		d.Close() //nolint:errcheck
		return
	}
	host, _, _ := sip.ParseAddr(u.addr)
	// RespondSDP waits for the ACK; the dialog stays in the cache until BYE.
	if err := d.RespondSDP(sdp(host)); err != nil {
		// Each message is handled on a goroutine of its own, here and in
		// the proxies on the way: a BYE sent right after the ACK may end
		// the dialog before the ACK is read. The call was answered.
		if d.LoadState() != sip.DialogStateEnded {
			u.log.Warn().Err(err).Str("call_id", callID).Msg("answer")
			return
		}
		u.log.Debug().Str("call_id", callID).Msg("BYE overtook the ACK")
	}
	u.answered.Add(1)
	u.log.Info().Str("call_id", callID).Msg("answered")
}

func (u *UA) onBye(req *sip.Request, tx sip.ServerTransaction) {
	if err := u.answers.ReadBye(req, tx); err == nil {
		return
	}
	if err := u.calls.ReadBye(req, tx); err == nil {
		return
	}
	tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil)) //nolint:errcheck
}

// Register registers the UA's contact for expires seconds and returns the
// final response's status code.
func (u *UA) Register(ctx context.Context, expires int) (int, error) {
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: u.aor.Host})
	from := sip.FromHeader{Address: u.aor, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: u.aor})
	cid := sip.CallIDHeader(u.regCallID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: u.regCSeq.Add(1), MethodName: sip.REGISTER})
	req.AppendHeader(u.contact.Clone())
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	req.SetDestination(u.cfg.Proxy)
	req.SetBody(nil)
	res, err := u.cli.Do(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("register %s: %w", u.aor.String(), err)
	}
	if res.StatusCode != 200 {
		return res.StatusCode, fmt.Errorf("register %s: %s", u.aor.String(), res.StartLine())
	}
	return 200, nil
}

// CallResult is what the caller saw of one call.
type CallResult struct {
	CallID string
	// Codes are the INVITE's responses in order, e.g. [180 200].
	Codes []int
	// Setup is the time from INVITE to the 200.
	Setup time.Duration
}

// Call places a whole call to target through the proxy: INVITE, wait for
// the answer, ACK, BYE. A final error response is returned as an error
// with its status code in the result.
func (u *UA) Call(ctx context.Context, target sip.Uri) (CallResult, error) {
	req := sip.NewRequest(sip.INVITE, target)
	from := sip.FromHeader{Address: u.aor, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: target})
	host, port, err := sip.ParseAddr(u.cfg.Proxy)
	if err != nil {
		return CallResult{}, fmt.Errorf("proxy %q: %w", u.cfg.Proxy, err)
	}
	req.AppendHeader(&sip.RouteHeader{Address: sip.Uri{Scheme: "sip", Host: host, Port: port,
		UriParams: sip.HeaderParams{{K: "lr"}}}})
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	lhost, _, _ := sip.ParseAddr(u.addr)
	req.SetBody(sdp(lhost))
	var res CallResult
	start := time.Now()
	s, err := u.calls.WriteInvite(ctx, req)
	if err != nil {
		return res, fmt.Errorf("invite %s: %w", target.String(), err)
	}
	defer s.Close() //nolint:errcheck
	if h := s.InviteRequest.CallID(); h != nil {
		res.CallID = h.Value()
	}
	err = s.WaitAnswer(ctx, sipgo.AnswerOptions{OnResponse: func(r *sip.Response) error {
		res.Codes = append(res.Codes, r.StatusCode)
		return nil
	}})
	if err != nil {
		var de *sipgo.ErrDialogResponse
		if errors.As(err, &de) && (len(res.Codes) == 0 || res.Codes[len(res.Codes)-1] != de.Res.StatusCode) {
			res.Codes = append(res.Codes, de.Res.StatusCode)
		}
		return res, fmt.Errorf("call %s: %w", target.String(), err)
	}
	res.Setup = time.Since(start)
	if len(res.Codes) == 0 || res.Codes[len(res.Codes)-1] != 200 {
		res.Codes = append(res.Codes, 200)
	}
	if err := s.Ack(ctx); err != nil {
		return res, fmt.Errorf("call %s: ack: %w", target.String(), err)
	}
	if u.cfg.Hold > 0 {
		select {
		case <-time.After(u.cfg.Hold):
		case <-ctx.Done():
		}
	}
	if err := s.Bye(ctx); err != nil {
		return res, fmt.Errorf("call %s: bye: %w", target.String(), err)
	}
	return res, nil
}
