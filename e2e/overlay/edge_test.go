package overlay

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/phone"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
	"github.com/p2psip/p2psip/superpeer"
)

// Tests of the super peers' SIP edge (issue 4, ARCHITECTURE.md §6): plain
// SIP phones — SIPp and sipgo UAs that run no agent — registering with
// digest authentication at a super peer and calling, and being called by,
// phones behind agents elsewhere in the overlay.

// edgeOverlay starts n converged super peers, tune applied to the i-th.
func edgeOverlay(t *testing.T, n int, tune func(i int, c *superpeer.Config)) (*harness.Overlay, []*harness.SP) {
	t.Helper()
	o := harness.New(t)
	sps := make([]*harness.SP, n)
	for i := range sps {
		o.Tune = func(c *superpeer.Config) {
			if tune != nil {
				tune(i, c)
			}
		}
		sps[i] = o.Start()
	}
	o.Tune = nil
	o.WaitConverged(15 * time.Second)
	return o, sps
}

// edgeGet reads an AoR's location record through a client session (nil
// when there is none).
func edgeGet(t *testing.T, o *harness.Overlay, sp *harness.SP, aor string) *record.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := o.Dial(sp, o.Credentials("observer"), wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec, err := s.Get(ctx, record.KindLocation, aor)
	switch {
	case wire.CodeOf(err) == wire.CodeNotFound:
		return nil
	case err != nil:
		t.Fatalf("get %s: %v", aor, err)
	}
	return rec.Live(time.Now())
}

// edgeContacts are the live contacts of an AoR.
func edgeContacts(t *testing.T, o *harness.Overlay, sp *harness.SP, aor string) []record.Contact {
	t.Helper()
	var out []record.Contact
	if rec := edgeGet(t, o, sp, aor); rec != nil {
		for _, e := range rec.Entries {
			if e.Contact != nil {
				out = append(out, *e.Contact)
			}
		}
	}
	return out
}

func edgeScenario(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "edge", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// edgeSIPpRegister runs SIPp as a plain phone registering user at sp over
// transport ("u1" UDP, "t1" TCP) from port, with the user's credentials;
// it stays connected hold after the 200. It returns the running process.
func edgeSIPpRegister(ctx context.Context, t *testing.T, o *harness.Overlay, sp *harness.SP, user, transport string, port int, hold time.Duration) *sipp.Proc {
	t.Helper()
	cred := o.Credentials(user)
	return sipp.Start(ctx, t, "register-"+user+"-"+transport, "", sp.Node.SIPAddr(),
		"-sf", edgeScenario(t, "register_auth.xml"), "-s", user, "-set", "domain", o.Name,
		"-d", strconv.Itoa(int(hold/time.Millisecond)),
		"-au", cred.Username, "-ap", cred.Password, "-t", transport, "-p", strconv.Itoa(port),
		"-m", "1", "-timeout", "20s", "-timeout_error")
}

// TestEdgeRegisterSIPp: SIPp registers with digest auth over UDP and over
// TCP; the contact is stored with this super peer and the phone's flow.
// The TCP flow ends with SIPp: its binding is then removed.
func TestEdgeRegisterSIPp(t *testing.T) {
	sipp.Bin(t)
	o, sps := edgeOverlay(t, 3, nil)
	ctx := t.Context()
	for _, tc := range []struct{ user, transport, flow string }{
		{"alice", "u1", "udp"},
		{"bob", "t1", "tcp"},
	} {
		t.Run(tc.flow, func(t *testing.T) {
			port := sipp.FreeUDPPort(t)
			p := edgeSIPpRegister(ctx, t, o, sps[0], tc.user, tc.transport, port, 3*time.Second)
			aor := "sip:" + tc.user + "@" + o.Name
			var c record.Contact
			harness.Eventually(t, 10*time.Second, func() error {
				cs := edgeContacts(t, o, sps[1], aor)
				if len(cs) != 1 {
					return fmt.Errorf("%d contacts for %s; sipp:\n%s", len(cs), aor, p.Output())
				}
				c = cs[0]
				return nil
			})
			if !c.PeerID.IsZero() || c.SP != sps[0].Node.ID() || c.SPAddr != sps[0].Node.PeerAddr() ||
				!strings.HasPrefix(c.Flow, tc.flow+" 127.0.0.1:") {
				t.Errorf("stored contact %+v", c)
			}
			if tc.flow == "udp" && c.Flow != "udp 127.0.0.1:"+strconv.Itoa(port) {
				t.Errorf("flow %q, want SIPp's source port %d", c.Flow, port)
			}
			if err := p.Wait(20 * time.Second); err != nil {
				t.Fatalf("%v\n%s", err, p.Output())
			}
			if tc.flow == "tcp" {
				// The connection closed with SIPp: the phone is gone.
				harness.Eventually(t, 10*time.Second, func() error {
					if cs := edgeContacts(t, o, sps[2], aor); len(cs) != 0 {
						return fmt.Errorf("%d contacts left after the TCP flow closed", len(cs))
					}
					return nil
				})
				if s := sps[0].Node.Edge().Stats(); s.BindingsDropped == 0 || s.FlowsClosed == 0 {
					t.Errorf("edge stats %+v: no flow closed", s)
				}
			}
		})
	}
	// The edge's /metrics: each registration was challenged once, then
	// stored.
	ok, challenged := counter(t, sps[0], "p2psip_registrar_registers_total", "ok"), counter(t, sps[0], "p2psip_registrar_registers_total", "unauthorized")
	if ok < 2 || challenged < 2 || counter(t, sps[0], "p2psip_registrar_store_writes_total", "") < 2 {
		t.Errorf("registrar metrics: %v ok, %v unauthorized, %v writes; want at least 2 each", ok, challenged,
			counter(t, sps[0], "p2psip_registrar_store_writes_total", ""))
	}
}

// TestEdgeCallsSIPp: a SIPp phone registered at super peer 0's edge calls
// bob, whose phone is behind an agent attached to super peer 1, and bob
// calls it back. Every tunnel payload takes 2 overlay hops: edge → SP1 →
// agent and agent → SP1 → edge.
func TestEdgeCallsSIPp(t *testing.T) {
	sipp.Bin(t)
	o, sps := edgeOverlay(t, 3, nil)
	ctx := t.Context()
	b := o.StartAgent("bob", sps[1])
	bob := phone.New(t, phone.Config{Name: "bob", User: "bob", Domain: o.Name, Proxy: b.SIPAddr(), Log: o.Log})
	phone.MustRegister(t, bob)
	edge := sps[0].Node.Edge()

	port := sipp.FreeUDPPort(t)
	reg := edgeSIPpRegister(ctx, t, o, sps[0], "alice", "u1", port, 0)
	if err := reg.Wait(20 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, reg.Output())
	}

	t.Run("edge phone calls agent phone", func(t *testing.T) {
		agentBefore, edgeBefore := b.Router().Stats().InByHops, edge.Stats().InByHops
		invites := bob.Invites.Load()
		uac := sipp.UAC(ctx, t, sipp.Calls{Target: sps[0].Node.SIPAddr(), From: "alice", To: "bob", Domain: o.Name, Port: port, N: 1, Rate: 1})
		if err := uac.Wait(30 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, uac.Output())
		}
		harness.Eventually(t, 10*time.Second, func() error {
			if bob.Invites.Load() != invites+1 || bob.Byes.Load() == 0 {
				return fmt.Errorf("bob got %d INVITE, %d BYE", bob.Invites.Load()-invites, bob.Byes.Load())
			}
			return nil
		})
		da, de := hopsDelta(agentBefore, b.Router().Stats().InByHops), hopsDelta(edgeBefore, edge.Stats().InByHops)
		checkHops(t, "bob's agent", da, 2, 3)             // INVITE, ACK, BYE
		checkHops(t, "alice's edge", de, 2, minResponses) // 180, 200, 200 to BYE
		t.Logf("tunnel payloads by hops [other 1 2 3]: bob's agent %v, edge %v", da, de)
	})

	t.Run("agent phone calls edge phone", func(t *testing.T) {
		agentBefore, edgeBefore := b.Router().Stats().InByHops, edge.Stats().InByHops
		uas := sipp.UAS(ctx, t, port, 1)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		codes, err := bob.Call(cctx, phone.URI("alice", o.Name))
		if err != nil || codes[len(codes)-1] != 200 {
			t.Fatalf("bob calls alice: %v %v", codes, err)
		}
		if err := uas.Wait(20 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, uas.Output())
		}
		da, de := hopsDelta(agentBefore, b.Router().Stats().InByHops), hopsDelta(edgeBefore, edge.Stats().InByHops)
		checkHops(t, "edge", de, 2, 3)                   // INVITE, ACK, BYE
		checkHops(t, "bob's agent", da, 2, minResponses) // 180, 200, 200 to BYE
		t.Logf("tunnel payloads by hops [other 1 2 3]: bob's agent %v, edge %v", da, de)
	})
	if s := edge.Stats(); s.MaxHops > 3 || s.Dropped != 0 {
		t.Errorf("edge stats: max hops %d, dropped %d", s.MaxHops, s.Dropped)
	}
}

// edgeUA is a bare sipgo UA for edge tests: a client (and server
// handlers) that never listens; it sends from an ephemeral port or
// connection of its own.
type edgeUA struct {
	ua  *sipgo.UserAgent
	srv *sipgo.Server
	cli *sipgo.Client
}

func newEdgeUA(t *testing.T, o *harness.Overlay, name string) *edgeUA {
	t.Helper()
	slog := logx.Slog(o.Log.With().Str("phone", name).Logger().Level(zerolog.ErrorLevel))
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(name), sipgo.WithUserAgentHostname(o.Name),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slog)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slog))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(slog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	return &edgeUA{ua: ua, srv: srv, cli: cli}
}

// register builds a REGISTER of aor (user@domain) with contact.
func edgeRegister(user, domain, contact string, expires int) *sip.Request {
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: domain})
	aor := sip.Uri{Scheme: "sip", User: user, Host: domain}
	from := &sip.FromHeader{Address: aor, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: aor})
	cid := sip.CallIDHeader(sip.GenerateTagN(16))
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.REGISTER})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	if contact != "" {
		req.AppendHeader(sip.NewHeader("Contact", "<"+contact+">"))
	}
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	req.SetBody(nil)
	return req
}

// do sends req to dst over transport and returns the final response.
func (u *edgeUA) do(t *testing.T, req *sip.Request, dst, transport string) *sip.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req.SetDestination(dst)
	req.SetTransport(transport)
	res, err := u.cli.Do(ctx, req)
	if err != nil {
		t.Fatalf("%s: %v", req.Method, err)
	}
	return res
}

// authorization answers a 401/407 the way a phone does (what SIPp's
// [authentication] does), with nonce count nc.
func edgeAuthorization(t *testing.T, res *sip.Response, method, uri string, cred auth.Credentials, nc int) sip.Header {
	t.Helper()
	name, hdr := "Authorization", "WWW-Authenticate"
	if res.StatusCode == 407 {
		name, hdr = "Proxy-Authorization", "Proxy-Authenticate"
	}
	h := res.GetHeader(hdr)
	if h == nil {
		t.Fatalf("%d without %s", res.StatusCode, hdr)
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		t.Fatal(err)
	}
	c, err := digest.Digest(chal, digest.Options{Method: method, URI: uri, Username: cred.Username, Password: cred.Password, Count: nc})
	if err != nil {
		t.Fatal(err)
	}
	return sip.NewHeader(name, c.String())
}

// registerWith sends req, answers the challenge with cred, and returns the
// final response to the authenticated request.
func (u *edgeUA) registerWith(t *testing.T, req *sip.Request, dst, transport string, cred auth.Credentials) *sip.Response {
	t.Helper()
	res := u.do(t, req.Clone(), dst, transport)
	if res.StatusCode != 401 {
		t.Fatalf("first REGISTER: %s, want 401", res.StartLine())
	}
	again := req.Clone()
	again.RemoveHeader("Via")
	again.CSeq().SeqNo++
	again.AppendHeader(edgeAuthorization(t, res, "REGISTER", req.Recipient.String(), cred, 1))
	return u.do(t, again, dst, transport)
}

// TestEdgeTCPFlowReuse: a phone registered over TCP is reached through
// the connection it registered over — it listens nowhere, and the port in
// its Contact accepts no connection — and its binding goes when the
// connection closes.
func TestEdgeTCPFlowReuse(t *testing.T) {
	o, sps := edgeOverlay(t, 2, nil)
	b := o.StartAgent("bob", sps[1])
	bob := phone.New(t, phone.Config{Name: "bob", User: "bob", Domain: o.Name, Proxy: b.SIPAddr(), Log: o.Log})
	phone.MustRegister(t, bob)

	// The port the Contact names: any connection to it would be a dial.
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	var dials atomic.Int32
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			c.Close()
		}
	}()

	carol := newEdgeUA(t, o, "carol")
	var invites, byes atomic.Int32
	contact := "sip:carol@" + trap.Addr().String() + ";transport=tcp"
	carol.srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		invites.Add(1)
		res := sip.NewResponseFromRequest(req, 200, "OK", phone.SDP)
		res.AppendHeader(sip.NewHeader("Contact", "<"+contact+">"))
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		tx.Respond(res) //nolint:errcheck
	})
	carol.srv.OnAck(func(*sip.Request, sip.ServerTransaction) {})
	carol.srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		byes.Add(1)
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil)) //nolint:errcheck
	})
	res := carol.registerWith(t, edgeRegister("carol", o.Name, contact, 600), sps[0].Node.SIPAddr(), "TCP", o.Credentials("carol"))
	if res.StatusCode != 200 {
		t.Fatalf("register: %s", res.StartLine())
	}
	cs := edgeContacts(t, o, sps[1], "sip:carol@"+o.Name)
	if len(cs) != 1 || !strings.HasPrefix(cs[0].Flow, "tcp 127.0.0.1:") {
		t.Fatalf("contacts %+v", cs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	codes, err := bob.Call(ctx, phone.URI("carol", o.Name))
	if err != nil || !slices.Contains(codes, 200) {
		t.Fatalf("bob calls carol: %v %v", codes, err)
	}
	harness.Eventually(t, 10*time.Second, func() error {
		if invites.Load() != 1 || byes.Load() != 1 {
			return fmt.Errorf("carol got %d INVITE, %d BYE", invites.Load(), byes.Load())
		}
		return nil
	})
	if n := dials.Load(); n != 0 {
		t.Errorf("the edge dialled carol's contact %d times", n)
	}

	// Carol's connection closes for good: her contact goes.
	carol.ua.Close()
	harness.Eventually(t, 10*time.Second, func() error {
		if cs := edgeContacts(t, o, sps[1], "sip:carol@"+o.Name); len(cs) != 0 {
			return fmt.Errorf("contacts after the connection closed: %+v", cs)
		}
		return nil
	})
}

// TestEdgeRefusals: bad credentials and bad requests are refused and
// store nothing.
func TestEdgeRefusals(t *testing.T) {
	o, sps := edgeOverlay(t, 2, func(i int, c *superpeer.Config) {
		if i == 1 {
			c.ForeignDomain = "404"
		}
	})
	edge := sps[0].Node.SIPAddr()
	u := newEdgeUA(t, o, "dave")
	contact := "sip:dave@127.0.0.1:5999"
	dave := o.Credentials("dave")
	noRecord := func(t *testing.T, user string) {
		t.Helper()
		if rec := edgeGet(t, o, sps[1], "sip:"+user+"@"+o.Name); rec != nil {
			t.Errorf("a record was stored for %s: %+v", user, rec)
		}
	}

	t.Run("no credentials", func(t *testing.T) {
		res := u.do(t, edgeRegister("dave", o.Name, contact, 600), edge, "UDP")
		if res.StatusCode != 401 || !strings.Contains(res.GetHeader("WWW-Authenticate").Value(), `realm="`+o.Name+`"`) {
			t.Fatalf("%s %v", res.StartLine(), res.GetHeader("WWW-Authenticate"))
		}
		noRecord(t, "dave")
	})
	t.Run("wrong password", func(t *testing.T) {
		bad := dave
		bad.Password = "not-the-password"
		if res := u.registerWith(t, edgeRegister("dave", o.Name, contact, 600), edge, "UDP", bad); res.StatusCode != 401 {
			t.Fatalf("%s, want 401 with a new challenge", res.StartLine())
		}
		noRecord(t, "dave")
	})
	t.Run("expired credentials", func(t *testing.T) {
		old, err := auth.Issue(o.Secret, "dave", time.Minute, time.Now().Add(-2*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if res := u.registerWith(t, edgeRegister("dave", o.Name, contact, 600), edge, "UDP", old); res.StatusCode != 403 {
			t.Fatalf("%s, want 403", res.StartLine())
		}
		noRecord(t, "dave")
	})
	t.Run("another user's aor", func(t *testing.T) {
		if res := u.registerWith(t, edgeRegister("erin", o.Name, contact, 600), edge, "UDP", dave); res.StatusCode != 403 {
			t.Fatalf("%s, want 403", res.StartLine())
		}
		noRecord(t, "erin")
	})
	t.Run("replayed authorization", func(t *testing.T) {
		req := edgeRegister("dave", o.Name, contact, 600)
		res := u.do(t, req.Clone(), edge, "UDP")
		authz := edgeAuthorization(t, res, "REGISTER", req.Recipient.String(), dave, 1)
		ok := req.Clone()
		ok.CSeq().SeqNo = 2
		ok.AppendHeader(authz)
		if res := u.do(t, ok, edge, "UDP"); res.StatusCode != 200 {
			t.Fatalf("authorized register: %s", res.StartLine())
		}
		// The same Authorization on a de-registration: refused, and the
		// binding stays.
		replay := edgeRegister("dave", o.Name, contact, 0)
		replay.ReplaceHeader(sip.HeaderClone(req.CallID()))
		replay.CSeq().SeqNo = 3
		replay.AppendHeader(sip.HeaderClone(authz))
		if res := u.do(t, replay, edge, "UDP"); res.StatusCode != 403 {
			t.Fatalf("replay: %s, want 403", res.StartLine())
		}
		if cs := edgeContacts(t, o, sps[1], "sip:dave@"+o.Name); len(cs) != 1 {
			t.Errorf("after the replay: %+v", cs)
		}
	})
	t.Run("header injection", func(t *testing.T) {
		// A LF or NUL inside a value survives sipgo's parser: 400.
		for name, h := range map[string]sip.Header{
			"lf in a header":  sip.NewHeader("X-Note", "a\nInjected: b"),
			"nul in a header": sip.NewHeader("Subject", "a\x00b"),
		} {
			req := edgeRegister("frank", o.Name, "sip:frank@127.0.0.1:5998", 600)
			req.AppendHeader(h)
			if res := u.do(t, req, edge, "UDP"); res.StatusCode != 400 {
				t.Errorf("%s: %s, want 400", name, res.StartLine())
			}
		}
		// A lone CR makes the message unparseable: sipgo drops it (and
		// logs it); no answer.
		req := edgeRegister("frank", o.Name, "sip:frank@127.0.0.1:5998", 600)
		req.AppendHeader(sip.NewHeader("X-Note", "a\rInjected: b"))
		req.SetDestination(edge)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if res, err := u.cli.Do(ctx, req); err == nil {
			t.Errorf("cr in a header: %s, want no answer", res.StartLine())
		}
		noRecord(t, "frank")
	})
	t.Run("foreign domain", func(t *testing.T) {
		if res := u.do(t, edgeRegister("dave", "example.org", contact, 600), edge, "UDP"); res.StatusCode != 403 {
			t.Errorf("register in another domain: %s, want 403", res.StartLine())
		}
		for sp, want := range map[*harness.SP]int{sps[0]: 403, sps[1]: 404} {
			inv := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "x", Host: "example.org"})
			edgeDialogHeaders(inv, "dave", o.Name, "x", "example.org")
			if res := u.do(t, inv, sp.Node.SIPAddr(), "UDP"); res.StatusCode != want {
				t.Errorf("INVITE to another domain: %s, want %d", res.StartLine(), want)
			}
		}
	})
}

// edgeDialogHeaders adds From, To (no tag), Call-ID, CSeq, Max-Forwards
// and a Contact (where nothing listens) to an out-of-dialog request
// without a body.
func edgeDialogHeaders(req *sip.Request, fromUser, fromHost, toUser, toHost string) {
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: fromUser, Host: fromHost}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: toUser, Host: toHost}})
	cid := sip.CallIDHeader(sip.GenerateTagN(16))
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: req.Method})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(sip.NewHeader("Contact", "<sip:"+fromUser+"@127.0.0.1:9>"))
	req.SetBody(nil)
}

// TestEdgeAuthPolicy: routing in from outside needs no credentials;
// sending out of the overlay (a Route to a plain SIP host) needs a
// registered flow or digest credentials (407 otherwise).
func TestEdgeAuthPolicy(t *testing.T) {
	o, sps := edgeOverlay(t, 2, nil)
	edgeAddr := sps[0].Node.SIPAddr()
	b := o.StartAgent("bob", sps[1])
	bob := phone.New(t, phone.Config{Name: "bob", User: "bob", Domain: o.Name, Proxy: b.SIPAddr(), Log: o.Log})
	phone.MustRegister(t, bob)

	// A gateway out of the overlay: answers every INVITE 486.
	gw := newEdgeUA(t, o, "gateway")
	var gwInvites atomic.Int32
	gw.srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		gwInvites.Add(1)
		tx.Respond(sip.NewResponseFromRequest(req, 486, "Busy Here", nil)) //nolint:errcheck
	})
	gwConn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gw.srv.ServeUDP(gwConn) //nolint:errcheck // ends at cleanup
	t.Cleanup(func() { gwConn.Close() })
	gwAddr := gwConn.LocalAddr().String()

	outside := newEdgeUA(t, o, "outsider")
	t.Run("routing in", func(t *testing.T) {
		bob.SetBehaviour(phone.Answer(0, 486))
		inv := sip.NewRequest(sip.INVITE, phone.URI("bob", o.Name))
		edgeDialogHeaders(inv, "someone", "example.org", "bob", o.Name)
		before := bob.Invites.Load()
		if res := outside.do(t, inv, edgeAddr, "UDP"); res.StatusCode != 486 {
			t.Fatalf("unauthenticated INVITE to bob: %s, want bob's 486", res.StartLine())
		}
		if bob.Invites.Load() != before+1 {
			t.Error("bob's phone did not ring")
		}
	})
	toGateway := func() *sip.Request {
		inv := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "+15550100", Host: "127.0.0.1"})
		inv.AppendHeader(sip.NewHeader("Route", "<sip:"+gwAddr+";lr>"))
		edgeDialogHeaders(inv, "dave", o.Name, "+15550100", "127.0.0.1")
		return inv
	}
	t.Run("out of the overlay needs credentials", func(t *testing.T) {
		res := outside.do(t, toGateway(), edgeAddr, "UDP")
		if res.StatusCode != 407 || res.GetHeader("Proxy-Authenticate") == nil {
			t.Fatalf("%s, want 407 with Proxy-Authenticate", res.StartLine())
		}
		if gwInvites.Load() != 0 {
			t.Fatal("the gateway got an unauthenticated INVITE")
		}
		inv := toGateway()
		again := inv.Clone()
		again.AppendHeader(edgeAuthorization(t, res, "INVITE", inv.Recipient.String(), o.Credentials("dave"), 1))
		if res := outside.do(t, again, edgeAddr, "UDP"); res.StatusCode != 486 {
			t.Fatalf("with credentials: %s, want the gateway's 486", res.StartLine())
		}
		if gwInvites.Load() != 1 {
			t.Errorf("gateway INVITEs %d", gwInvites.Load())
		}
	})
	t.Run("registered flow", func(t *testing.T) {
		erin := phone.New(t, phone.Config{Name: "erin", User: "erin", Domain: o.Name, Proxy: edgeAddr, Log: o.Log})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := erin.Register(ctx, 600)
		if err != nil || res.StatusCode != 401 {
			t.Fatalf("register: %v %v", res, err)
		}
		res, err = erin.Register(ctx, 600, edgeAuthorization(t, res, "REGISTER", "sip:"+o.Name, o.Credentials("erin"), 1))
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("register with credentials: %v %v", res, err)
		}
		before := gwInvites.Load()
		s, err := erin.Invite(ctx, sip.Uri{Scheme: "sip", User: "+15550100", Host: "127.0.0.1"}, sip.NewHeader("Route", "<sip:"+gwAddr+";lr>"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close() //nolint:errcheck
		err = s.WaitAnswer(ctx, sipgo.AnswerOptions{})
		if code := phone.ResponseCode(err); code != 486 {
			t.Fatalf("registered phone calls out: %v, want the gateway's 486", err)
		}
		if gwInvites.Load() != before+1 {
			t.Error("the gateway got no INVITE")
		}
		if s := sps[0].Node.Edge().Stats(); s.AdmittedFlow == 0 || s.AdmittedDigest == 0 {
			t.Errorf("edge stats %+v", s)
		}
	})
}

// TestEdgeOverload: with small in-flight and waiting limits a burst of
// calls gets 503 with Retry-After for what does not fit, and service is
// normal once it has passed.
func TestEdgeOverload(t *testing.T) {
	o, sps := edgeOverlay(t, 2, func(i int, c *superpeer.Config) {
		if i == 0 {
			c.EdgeMaxInFlight = 4
			c.EdgeMaxWaiting = 8
		}
	})
	edgeAddr := sps[0].Node.SIPAddr()
	b := o.StartAgent("bob", sps[1])
	bob := phone.New(t, phone.Config{Name: "bob", User: "bob", Domain: o.Name, Proxy: b.SIPAddr(), Log: o.Log})
	phone.MustRegister(t, bob)
	bob.SetBehaviour(phone.Answer(300*time.Millisecond, 486))

	const burst = 40
	var mu sync.Mutex
	codes := map[int]int{}
	retryAfter := 0
	var wg sync.WaitGroup
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := newEdgeUA(t, o, "flood-"+strconv.Itoa(i))
			inv := sip.NewRequest(sip.INVITE, phone.URI("bob", o.Name))
			edgeDialogHeaders(inv, "flood", "example.org", "bob", o.Name)
			inv.SetDestination(edgeAddr)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := u.cli.Do(ctx, inv)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				codes[0]++
				return
			}
			codes[res.StatusCode]++
			if h := res.GetHeader("Retry-After"); res.StatusCode == 503 && h != nil && h.Value() != "" {
				retryAfter++
			}
		}()
	}
	wg.Wait()
	t.Logf("burst of %d INVITEs against 4 in flight: %v", burst, codes)
	if codes[503] == 0 || retryAfter != codes[503] || codes[486] == 0 || codes[486]+codes[503] != burst {
		t.Fatalf("responses %v (%d with Retry-After): want 486s and 503s with Retry-After only", codes, retryAfter)
	}
	if s := sps[0].Node.Edge().Stats(); s.Overload != uint64(codes[503]) || counter(t, sps[0], "p2psip_sip_overload_total", "") != float64(codes[503]) {
		t.Errorf("edge counted %d overloads (metric %v), sent %d", s.Overload, counter(t, sps[0], "p2psip_sip_overload_total", ""), codes[503])
	}
	// The burst is over: normal service.
	for i := range 3 {
		u := newEdgeUA(t, o, "after-"+strconv.Itoa(i))
		inv := sip.NewRequest(sip.INVITE, phone.URI("bob", o.Name))
		edgeDialogHeaders(inv, "after", "example.org", "bob", o.Name)
		if res := u.do(t, inv, edgeAddr, "UDP"); res.StatusCode != 486 {
			t.Errorf("after the burst: %s, want bob's 486", res.StartLine())
		}
	}
}

// TestEdgeWaitingCallsDoNotStarve: requests whose targets take long to
// answer leave the in-flight count once they are forwarded, so ringing
// calls (or requests to a silent target, which wait out Timer F) do not
// make the edge refuse everything else with 503.
func TestEdgeWaitingCallsDoNotStarve(t *testing.T) {
	o, sps := edgeOverlay(t, 2, func(i int, c *superpeer.Config) {
		if i == 0 {
			c.EdgeMaxInFlight = 4
		}
	})
	edgeAddr := sps[0].Node.SIPAddr()
	b := o.StartAgent("bob", sps[1])
	bob := phone.New(t, phone.Config{Name: "bob", User: "bob", Domain: o.Name, Proxy: b.SIPAddr(), Log: o.Log})
	phone.MustRegister(t, bob)
	bob.SetBehaviour(phone.RingForever)

	const ringing = 12 // three times the in-flight limit
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	// One after another (a burst arriving at once may exceed the
	// in-flight limit while being routed, which is what it is for).
	for i := range ringing {
		before := bob.Invites.Load()
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := newEdgeUA(t, o, "ring-"+strconv.Itoa(i))
			inv := sip.NewRequest(sip.INVITE, phone.URI("bob", o.Name))
			edgeDialogHeaders(inv, "ring", "example.org", "bob", o.Name)
			inv.SetDestination(edgeAddr)
			u.cli.Do(ctx, inv) //nolint:errcheck // ends with the test
		}()
		harness.Eventually(t, 10*time.Second, func() error {
			if bob.Invites.Load() == before {
				return fmt.Errorf("call %d does not ring at bob's phone", i+1)
			}
			return nil
		})
	}
	// Twelve calls ring through the edge; it still serves others.
	bob.SetBehaviour(phone.Answer(0, 486))
	for i := range 3 {
		u := newEdgeUA(t, o, "other-"+strconv.Itoa(i))
		inv := sip.NewRequest(sip.INVITE, phone.URI("bob", o.Name))
		edgeDialogHeaders(inv, "other", "example.org", "bob", o.Name)
		if res := u.do(t, inv, edgeAddr, "UDP"); res.StatusCode != 486 {
			t.Errorf("with %d calls ringing: %s, want bob's 486", ringing, res.StartLine())
		}
	}
	if s := sps[0].Node.Edge().Stats(); s.Overload != 0 {
		t.Errorf("edge refused %d requests as overloaded", s.Overload)
	}
}
