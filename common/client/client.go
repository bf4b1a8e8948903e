// Package client opens peer-protocol sessions to a super peer: TCP, TLS,
// Hello, then a running link.Conn. It also offers the client operations of
// the concept document's client protocol (Store, Fetch, Remove, Find), used
// by the command line, by agents and by super peers among themselves.
package client

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// Config describes one session.
type Config struct {
	// Addr is the super peer's peer-protocol address (host:port).
	Addr string
	// TLS is the client TLS configuration (see auth.ClientTLSConfig).
	TLS *tls.Config
	// Hello builds the first frame once the TLS handshake is done, so a
	// super peer can bind its mesh proof to the session.
	Hello func(cs tls.ConnectionState) (wire.Hello, error)
	// Timeout bounds dialing, TLS and Hello together (default 5s).
	Timeout time.Duration
	// Link tunes the running connection (its Handler serves requests the
	// super peer sends us).
	Link link.Config
}

// Session is an admitted connection whose link is running.
type Session struct {
	Conn *link.Conn
	OK   wire.HelloOK
	// Self is the Peer-ID the super peer knows us by (our certificate's
	// key; zero if it is not Ed25519).
	Self ids.PeerID
	done chan struct{}
}

// Dial connects and completes the handshake; the returned session runs
// until Close or until the connection breaks (see Conn.Done).
func Dial(ctx context.Context, cfg Config, log zerolog.Logger) (*Session, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	d := &tls.Dialer{NetDialer: &net.Dialer{KeepAlive: 30 * time.Second}, Config: cfg.TLS}
	nc, err := d.DialContext(hctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cfg.Addr, err)
	}
	ok, err := handshake(hctx, nc.(*tls.Conn), cfg.Hello)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("hello %s: %w", cfg.Addr, err)
	}
	s := &Session{Conn: link.New(nc, cfg.Link, log), OK: *ok, done: make(chan struct{})}
	if cfg.TLS != nil && len(cfg.TLS.Certificates) > 0 {
		if k, isEd := cfg.TLS.Certificates[0].PrivateKey.(ed25519.PrivateKey); isEd {
			s.Self = ids.PeerIDFromKey(k.Public().(ed25519.PublicKey))
		}
	}
	go func() {
		defer close(s.done)
		s.Conn.Run(context.Background()) //nolint:errcheck // the reason stays in Conn.Err
	}()
	return s, nil
}

// handshake sends Hello and reads the answer before the link starts, so a
// refusal is reported as such rather than as a broken stream.
func handshake(ctx context.Context, tc *tls.Conn, hello func(tls.ConnectionState) (wire.Hello, error)) (*wire.HelloOK, error) {
	if dl, ok := ctx.Deadline(); ok {
		tc.SetDeadline(dl) //nolint:errcheck // a failed deadline shows as a failed read
		defer tc.SetDeadline(time.Time{})
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	h, err := hello(tc.ConnectionState())
	if err != nil {
		return nil, err
	}
	body, err := wire.Marshal(&h)
	if err != nil {
		return nil, err
	}
	if err := wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, TxID: 1}, Body: body}); err != nil {
		return nil, err
	}
	f, err := wire.ReadFrame(tc, 64<<10)
	if err != nil {
		return nil, err
	}
	if f.Type != wire.TypeHello || !f.IsResponse() {
		return nil, fmt.Errorf("%w: expected hello response, got %s", wire.ErrMalformed, f.Type)
	}
	if f.Flags&wire.FlagError != 0 {
		var e wire.Error
		if err := wire.Unmarshal(f.Body, &e); err != nil {
			return nil, err
		}
		return nil, &e
	}
	var ok wire.HelloOK
	if err := wire.Unmarshal(f.Body, &ok); err != nil {
		return nil, err
	}
	return &ok, nil
}

// Close ends the session and waits for its link to stop.
func (s *Session) Close() error {
	s.Conn.Close()
	<-s.done
	return nil
}

// Put asks the super peer to store rec's entries at a write quorum.
func (s *Session) Put(ctx context.Context, rec *record.Record) (*wire.StoreResp, error) {
	var resp wire.StoreResp
	if err := s.call(ctx, wire.TypeStore, &wire.StoreReq{Record: *rec}, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// PutState is Put that also returns the record's live entries as the
// write quorum holds them after the write (nil when none is live, or when
// the super peer predates StoreReq.Echo: then read it with Get).
func (s *Session) PutState(ctx context.Context, rec *record.Record) (*wire.StoreResp, error) {
	var resp wire.StoreResp
	if err := s.call(ctx, wire.TypeStore, &wire.StoreReq{Record: *rec, Echo: true}, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Get fetches the live entries of a record.
func (s *Session) Get(ctx context.Context, kind record.Kind, name string) (*record.Record, error) {
	return s.get(ctx, &wire.FetchReq{Kind: kind, Name: name})
}

// GetOne is a routing read (wire.FetchReq.One): one replica's live copy,
// a quorum read only when it has none. SIP routing uses it.
func (s *Session) GetOne(ctx context.Context, kind record.Kind, name string) (*record.Record, error) {
	return s.get(ctx, &wire.FetchReq{Kind: kind, Name: name, One: true})
}

func (s *Session) get(ctx context.Context, req *wire.FetchReq) (*record.Record, error) {
	var resp wire.FetchResp
	if err := s.call(ctx, wire.TypeFetch, req, &resp); err != nil {
		return nil, err
	}
	if resp.Record == nil {
		return nil, &wire.Error{Code: wire.CodeNotFound, Reason: "no such record"}
	}
	return resp.Record, nil
}

// Remove tombstones entries (keys, or all when empty).
func (s *Session) Remove(ctx context.Context, kind record.Kind, name string, keys []string) (*wire.StoreResp, error) {
	var resp wire.StoreResp
	if err := s.call(ctx, wire.TypeRemove, &wire.RemoveReq{Kind: kind, Name: name, Keys: keys}, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Find lists the providers of a service.
func (s *Session) Find(ctx context.Context, service string) (*record.Record, error) {
	var resp wire.FetchResp
	if err := s.call(ctx, wire.TypeFind, &wire.FindReq{Service: service}, &resp); err != nil {
		return nil, err
	}
	if resp.Record == nil {
		return nil, &wire.Error{Code: wire.CodeNotFound, Reason: "no providers"}
	}
	return resp.Record, nil
}

func (s *Session) call(ctx context.Context, t wire.Type, req, resp any) error {
	f, err := s.Conn.Request(ctx, t, req)
	if err != nil {
		return err
	}
	if err := wire.Unmarshal(f.Body, resp); err != nil {
		return fmt.Errorf("%s response: %w", t, err)
	}
	return nil
}

// IsCode reports whether err is a protocol error with the given code.
func IsCode(err error, code wire.Code) bool {
	var e *wire.Error
	return errors.As(err, &e) && e.Code == code
}
