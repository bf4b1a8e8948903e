// Package attachload is a load generator for super-peer attach sessions
// (issue 7, item 4): many lightweight agents, each with its own Ed25519
// identity (so its own Peer-ID), each over real TLS with the peer
// protocol's Hello and Attach, dialled from several loopback source
// addresses so ephemeral ports do not run out, then kept alive with Ping
// at the keepalive interval the super peer announced.
//
// An agent here is only its session: no SIP, no records. Identities are
// derived from a seed (Ed25519 key from SHA-256(seed, index)) and their
// self-signed certificates are made by patching the key into one
// template and signing, which costs one Ed25519 signature instead of
// x509.CreateCertificate's sign, verify and parse.
package attachload

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/wire"
)

// Config describes a load.
type Config struct {
	// Addr is the super peer's peer-protocol address.
	Addr    string
	Overlay string
	// Secret issues each agent's credentials (user "load-<index>").
	Secret []byte
	// Roots verifies the super peer (nil: not verified).
	Roots *x509.CertPool
	// Agents is how many sessions to open.
	Agents int
	// Sources are the local IP addresses to dial from, round robin
	// (default 127.0.0.1). Each gives about 28,000 ephemeral ports.
	Sources []net.IP
	// Concurrency bounds handshakes in flight (default 32).
	Concurrency int
	// Seed names the identity set (default "attachload").
	Seed string
	// PingEvery overrides the keepalive the super peer announced.
	PingEvery time.Duration
	// CurvePreferences, if set, replaces the key exchanges the agents
	// offer (default: crypto/tls's, X25519MLKEM768 first).
	CurvePreferences []tls.CurveID
}

// Agent is one attached session.
type Agent struct {
	Index int
	Conn  *link.Conn
}

// Generator opens and keeps the sessions.
type Generator struct {
	cfg Config
	log zerolog.Logger
	tpl certTemplate

	mu        sync.Mutex // guards agents
	agents    []*Agent
	keepalive time.Duration

	pingsOK, pingsFailed atomic.Int64
}

// AttachStats says how the attach phase went.
type AttachStats struct {
	Attached int
	Failed   int
	// Errors counts failures by message (first 80 characters).
	Errors  map[string]int
	Elapsed time.Duration
	// IdentityTime is the CPU-side time spent making keys and
	// certificates, summed over workers.
	IdentityTime time.Duration
}

// Rate is attaches per second.
func (s AttachStats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Attached) / s.Elapsed.Seconds()
}

// New checks cfg.
func New(cfg Config, log zerolog.Logger) (*Generator, error) {
	if cfg.Addr == "" || cfg.Agents <= 0 || len(cfg.Secret) == 0 {
		return nil, errors.New("attachload: Addr, Agents and Secret are required")
	}
	if len(cfg.Sources) == 0 {
		cfg.Sources = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 32
	}
	if cfg.Seed == "" {
		cfg.Seed = "attachload"
	}
	tpl, err := newCertTemplate()
	if err != nil {
		return nil, err
	}
	return &Generator{cfg: cfg, log: log, tpl: tpl}, nil
}

// Attach opens every session, Concurrency at a time, and returns when all
// were tried or ctx ended.
func (g *Generator) Attach(ctx context.Context) AttachStats {
	start := time.Now()
	next := make(chan int)
	var mu sync.Mutex
	st := AttachStats{Errors: map[string]int{}}
	var idNanos atomic.Int64
	var wg sync.WaitGroup
	for range g.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				a, idt, err := g.attachOne(ctx, i)
				idNanos.Add(int64(idt))
				mu.Lock()
				if err != nil {
					st.Failed++
					msg := err.Error()
					if len(msg) > 80 {
						msg = msg[:80]
					}
					st.Errors[msg]++
				} else {
					st.Attached++
				}
				mu.Unlock()
				if a != nil {
					g.mu.Lock()
					g.agents = append(g.agents, a)
					g.mu.Unlock()
				}
			}
		}()
	}
feed:
	for i := range g.cfg.Agents {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	st.Elapsed = time.Since(start)
	st.IdentityTime = time.Duration(idNanos.Load())
	return st
}

// Identity derives agent i's key and self-signed certificate.
func (g *Generator) Identity(i int) (tls.Certificate, error) {
	var seed [8]byte
	binary.BigEndian.PutUint64(seed[:], uint64(i))
	sum := sha256.Sum256(append([]byte(g.cfg.Seed+"\x00"), seed[:]...))
	key := ed25519.NewKeyFromSeed(sum[:])
	return g.tpl.certificate(key)
}

func (g *Generator) attachOne(ctx context.Context, i int) (*Agent, time.Duration, error) {
	t0 := time.Now()
	cert, err := g.Identity(i)
	idt := time.Since(t0)
	if err != nil {
		return nil, idt, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	src := g.cfg.Sources[i%len(g.cfg.Sources)]
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
	host, _, err := net.SplitHostPort(g.cfg.Addr)
	if err != nil {
		return nil, idt, err
	}
	tcfg := auth.ClientTLSConfig(&cert, g.cfg.Roots, host)
	tcfg.CurvePreferences = g.cfg.CurvePreferences
	nc, err := d.DialContext(ctx, "tcp", g.cfg.Addr)
	if err != nil {
		return nil, idt, fmt.Errorf("dial: %w", err)
	}
	tc := tls.Client(nc, tcfg)
	if dl, ok := ctx.Deadline(); ok {
		tc.SetDeadline(dl) //nolint:errcheck // a failed deadline shows as a failed read
	}
	if err := g.hello(ctx, tc, i); err != nil {
		tc.Close()
		return nil, idt, err
	}
	tc.SetDeadline(time.Time{}) //nolint:errcheck
	c := link.New(tc, link.Config{Handler: serveAgent, ParkAfter: time.Second, QueueLen: 8}, g.log)
	c.Start(context.Background(), nil)
	resp, err := c.Request(ctx, wire.TypeAttach, &wire.Attach{NoRedirect: true})
	if err != nil {
		c.Close()
		return nil, idt, fmt.Errorf("attach: %w", err)
	}
	var res wire.AttachResult
	if err := wire.Unmarshal(resp.Body, &res); err != nil {
		c.Close()
		return nil, idt, fmt.Errorf("attach result: %w", err)
	}
	if res.Status != wire.AttachOK {
		c.Close()
		return nil, idt, fmt.Errorf("attach: status %d", res.Status)
	}
	if res.KeepaliveMS > 0 {
		g.mu.Lock()
		g.keepalive = time.Duration(res.KeepaliveMS) * time.Millisecond
		g.mu.Unlock()
	}
	return &Agent{Index: i, Conn: c}, idt, nil
}

func (g *Generator) hello(ctx context.Context, tc *tls.Conn, i int) error {
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	creds, err := auth.Issue(g.cfg.Secret, fmt.Sprintf("load-%d", i), 24*time.Hour, time.Now())
	if err != nil {
		return err
	}
	body, err := wire.Marshal(&wire.Hello{Role: wire.RoleAgent, Overlay: g.cfg.Overlay, Username: creds.Username, Password: creds.Password})
	if err != nil {
		return err
	}
	if err := wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, TxID: 1}, Body: body}); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	f, err := wire.ReadFrame(tc, 64<<10)
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if f.Flags&wire.FlagError != 0 {
		var e wire.Error
		if err := wire.Unmarshal(f.Body, &e); err != nil {
			return fmt.Errorf("hello: %w", err)
		}
		return fmt.Errorf("hello: %w", &e)
	}
	return nil
}

// serveAgent answers what a super peer may ask an idle agent.
func serveAgent(c *link.Conn, f *wire.Frame) {
	switch f.Type {
	case wire.TypePing:
		c.Reply(f, &wire.Ping{}) //nolint:errcheck
	case wire.TypeTunnel:
	default:
		c.ReplyError(f, wire.Errorf(wire.CodeUnknownType, "%s not served by a load agent", f.Type)) //nolint:errcheck
	}
}

// Live counts the sessions still open.
func (g *Generator) Live() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, a := range g.agents {
		select {
		case <-a.Conn.Done():
		default:
			n++
		}
	}
	return n
}

// Keepalive is the ping interval in use.
func (g *Generator) Keepalive() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cfg.PingEvery > 0 {
		return g.cfg.PingEvery
	}
	if g.keepalive > 0 {
		return g.keepalive
	}
	return 25 * time.Second
}

// PingStats says how keeping the sessions alive went.
type PingStats struct {
	OK, Failed int64
	// P50, P99 and Max are Ping round-trip times.
	P50, P99, Max time.Duration
}

// Keep pings every live session once per keepalive interval, spread
// evenly over it, until ctx ends.
func (g *Generator) Keep(ctx context.Context) PingStats {
	g.mu.Lock()
	agents := append([]*Agent(nil), g.agents...)
	g.mu.Unlock()
	if len(agents) == 0 {
		<-ctx.Done()
		return PingStats{}
	}
	every := g.Keepalive()
	work := make(chan *Agent, 1024)
	var rttMu sync.Mutex
	var rtts []time.Duration
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range work {
				// As an agent does, a ping may take up to a keepalive interval; a
				// short one still gets seconds (a loaded CI host).
				pctx, cancel := context.WithTimeout(context.Background(), max(every, 5*time.Second))
				t0 := time.Now()
				_, err := a.Conn.Request(pctx, wire.TypePing, &wire.Ping{})
				cancel()
				if err != nil {
					g.pingsFailed.Add(1)
					continue
				}
				g.pingsOK.Add(1)
				rttMu.Lock()
				rtts = append(rtts, time.Since(t0))
				rttMu.Unlock()
			}
		}()
	}
	start := time.Now()
	sent := 0
	t := time.NewTicker(10 * time.Millisecond)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
		}
		due := int(float64(len(agents)) * time.Since(start).Seconds() / every.Seconds())
		for ; sent < due; sent++ {
			a := agents[sent%len(agents)]
			select {
			case <-a.Conn.Done():
				continue
			default:
			}
			select {
			case work <- a:
			case <-ctx.Done():
				break loop
			}
		}
	}
	t.Stop()
	close(work)
	wg.Wait()
	st := PingStats{OK: g.pingsOK.Load(), Failed: g.pingsFailed.Load()}
	if len(rtts) > 0 {
		sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
		st.P50, st.P99, st.Max = rtts[len(rtts)/2], rtts[len(rtts)*99/100], rtts[len(rtts)-1]
	}
	return st
}

// Close ends every session and waits until they are gone.
func (g *Generator) Close() {
	g.mu.Lock()
	agents := g.agents
	g.agents = nil
	g.mu.Unlock()
	for _, a := range agents {
		a.Conn.Close()
	}
	for _, a := range agents {
		<-a.Conn.Done()
	}
}

// certTemplate is one self-signed Ed25519 certificate whose public key and
// signature are swapped for each identity. Its fields are fixed size, so
// the DER layout is the same for every key.
type certTemplate struct {
	der    []byte
	tbsOff int // offset and length of tbsCertificate in der
	tbsLen int
	keyOff int // offset of the 32 key bytes in der
}

func newCertTemplate() (certTemplate, error) {
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return certTemplate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(0x7fffffff),
		Subject:               pkix.Name{CommonName: "attachload agent"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, pub, key)
	if err != nil {
		return certTemplate{}, fmt.Errorf("certificate template: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return certTemplate{}, fmt.Errorf("certificate template: %w", err)
	}
	t := certTemplate{der: der, tbsOff: bytes.Index(der, c.RawTBSCertificate), tbsLen: len(c.RawTBSCertificate), keyOff: bytes.Index(der, pub)}
	if t.tbsOff < 0 || t.keyOff < t.tbsOff || t.keyOff+len(pub) > t.tbsOff+t.tbsLen ||
		!bytes.Equal(der[len(der)-ed25519.SignatureSize:], c.Signature) {
		return certTemplate{}, errors.New("certificate template: unexpected layout")
	}
	return t, nil
}

// certificate makes key's self-signed certificate: the template with
// key's public key, signed by key.
func (t certTemplate) certificate(key ed25519.PrivateKey) (tls.Certificate, error) {
	der := bytes.Clone(t.der)
	copy(der[t.keyOff:], key.Public().(ed25519.PublicKey))
	sig := ed25519.Sign(key, der[t.tbsOff:t.tbsOff+t.tbsLen])
	copy(der[len(der)-ed25519.SignatureSize:], sig)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
