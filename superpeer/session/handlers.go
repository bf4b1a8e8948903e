package session

import (
	"context"
	"time"

	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/store"
)

// Handler serves the requests of one authenticated peer. It is also used
// for links this super peer dialled to other super peers.
func (s *Server) Handler(peer Peer) link.Handler {
	w := store.Writer{User: peer.User, PeerID: peer.ID, SuperPeer: peer.Role == wire.RoleSuperPeer}
	return func(c *link.Conn, f *wire.Frame) {
		s.m.frames.WithLabelValues(f.Type.String()).Inc()
		switch f.Type {
		case wire.TypePing:
			ping := &wire.Ping{}
			if s.cfg.Router != nil {
				ping.Load, ping.Capacity = uint32(s.cfg.Router.Attached()), uint32(s.cfg.Router.Capacity())
			}
			c.Reply(f, ping) //nolint:errcheck // a dead link ends the session anyway
			return
		case wire.TypeTunnel:
			if s.cfg.Router == nil {
				return
			}
			s.cfg.Router.Tunnel(peer, c, f)
			return
		case wire.TypeAttach:
			s.attach(peer, c, f)
			return
		case wire.TypeStore, wire.TypeFetch, wire.TypeRemove, wire.TypeFind:
		case wire.TypePromote, wire.TypeDialBack:
			if msg := promoteForbidden(s.cfg.Promoter, peer, f.Type); msg != "" {
				c.ReplyError(f, wire.Errorf(wire.CodeForbidden, "%s", msg)) //nolint:errcheck
				return
			}
		case wire.TypeReplicate, wire.TypeRead, wire.TypeDigest, wire.TypeSync:
			if !w.SuperPeer {
				c.ReplyError(f, wire.Errorf(wire.CodeForbidden, "%s is for super peers", f.Type)) //nolint:errcheck
				return
			}
		default:
			c.ReplyError(f, wire.Errorf(wire.CodeUnknownType, "%s not served here", f.Type)) //nolint:errcheck
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.m.overload.Inc()
			c.ReplyError(f, wire.Errorf(wire.CodeUnavailable, "super peer overloaded")) //nolint:errcheck
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			<-s.sem
			c.ReplyError(f, wire.Errorf(wire.CodeUnavailable, "super peer shutting down")) //nolint:errcheck
			return
		}
		s.mu.Unlock()
		job := func() {
			defer func() { <-s.sem }()
			base := context.Background()
			if p := s.ctx.Load(); p != nil {
				base = *p
			}
			timeout := s.cfg.RequestTimeout
			if f.Type == wire.TypePromote || f.Type == wire.TypeDialBack {
				timeout = max(timeout, promoteTimeout)
			}
			ctx, cancel := context.WithTimeout(base, timeout)
			defer cancel()
			resp, err := s.dispatch(ctx, peer, w, f)
			if err != nil {
				c.ReplyError(f, err) //nolint:errcheck
				return
			}
			c.Reply(f, resp) //nolint:errcheck
		}
		select {
		case s.jobs <- job: // an idle worker took it
		default:
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				<-s.sem
				c.ReplyError(f, wire.Errorf(wire.CodeUnavailable, "super peer shutting down")) //nolint:errcheck
				return
			}
			s.wg.Add(1)
			s.mu.Unlock()
			go s.worker(job)
		}
	}
}

// workerIdle is how long a request worker waits for the next request
// before it exits.
const workerIdle = 10 * time.Second

// worker serves requests until none came for workerIdle or the server
// stops. Workers are reused rather than started per request: a request
// goes deep (CBOR decoding, a quorum write) and a fresh goroutine's stack
// would grow, by copying, every time.
func (s *Server) worker(job func()) {
	defer s.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	var stop <-chan struct{}
	if p := s.ctx.Load(); p != nil {
		stop = (*p).Done()
	}
	for {
		job()
		idle.Reset(workerIdle)
		select {
		case job = <-s.jobs:
		case <-idle.C:
			return
		case <-stop:
			return
		}
	}
}

func (s *Server) dispatch(ctx context.Context, peer Peer, w store.Writer, f *wire.Frame) (any, error) {
	st := s.cfg.Store
	switch f.Type {
	case wire.TypeStore:
		var req wire.StoreReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		if req.Echo {
			res, state, err := st.PutState(ctx, w, &req.Record)
			if err != nil {
				return nil, err
			}
			return &wire.StoreResp{Acks: res.Acks, Replicas: res.Replicas, Record: state}, nil
		}
		res, err := st.Put(ctx, w, &req.Record)
		if err != nil {
			return nil, err
		}
		return &wire.StoreResp{Acks: res.Acks, Replicas: res.Replicas}, nil
	case wire.TypeFetch:
		var req wire.FetchReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		get := st.Get
		if req.One {
			get = st.GetOne
		}
		rec, err := get(ctx, req.Kind, req.Name)
		if err != nil {
			return nil, err
		}
		return &wire.FetchResp{Record: rec}, nil
	case wire.TypeRemove:
		var req wire.RemoveReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		res, err := st.Remove(ctx, w, req.Kind, req.Name, req.Keys)
		if err != nil {
			return nil, err
		}
		return &wire.StoreResp{Acks: res.Acks, Replicas: res.Replicas}, nil
	case wire.TypeFind:
		var req wire.FindReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		rec, err := st.Find(ctx, req.Service)
		if err != nil {
			return nil, err
		}
		return &wire.FetchResp{Record: rec}, nil
	case wire.TypeReplicate:
		var req wire.ReplicateReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		return st.HandleReplicate(peer.ID, &req)
	case wire.TypeRead:
		var req wire.ReadReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		return st.HandleRead(&req)
	case wire.TypeDigest:
		var req wire.DigestReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		return st.HandleDigest(peer.ID, &req)
	case wire.TypeSync:
		var req wire.SyncReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		return st.HandleSync(peer.ID, &req)
	case wire.TypePromote:
		var req wire.PromoteReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		return s.cfg.Promoter.Promote(ctx, peer, &req)
	case wire.TypeDialBack:
		var req wire.DialBackReq
		if err := decode(f, &req); err != nil {
			return nil, err
		}
		return s.cfg.Promoter.DialBack(ctx, &req)
	}
	return nil, wire.Errorf(wire.CodeUnknownType, "%s not served here", f.Type)
}

// promoteForbidden says why a Promote or DialBack from peer is not served
// ("" when it is): promotion is asked by attached agents, dial-back tests
// by super peers.
func promoteForbidden(p Promoter, peer Peer, t wire.Type) string {
	switch {
	case p == nil:
		return "promotion not served by this super peer"
	case t == wire.TypePromote && peer.Role != wire.RoleAgent:
		return "promote is for agents"
	case t == wire.TypeDialBack && peer.Role != wire.RoleSuperPeer:
		return "dialback is for super peers"
	}
	return ""
}

func decode(f *wire.Frame, v any) error {
	if err := wire.Unmarshal(f.Body, v); err != nil {
		return wire.Errorf(wire.CodeBadRequest, "%v", err)
	}
	return nil
}

// attach answers an agent's Attach inline: the decision uses gossiped loads
// and never waits on the network.
func (s *Server) attach(peer Peer, c *link.Conn, f *wire.Frame) {
	if peer.Role != wire.RoleAgent || s.cfg.Router == nil {
		c.ReplyError(f, wire.Errorf(wire.CodeForbidden, "attach is for agents")) //nolint:errcheck
		return
	}
	var req wire.Attach
	if err := decode(f, &req); err != nil {
		c.ReplyError(f, err) //nolint:errcheck
		return
	}
	res, err := s.cfg.Router.Attach(context.Background(), peer, c, &req)
	if err != nil {
		c.ReplyError(f, err) //nolint:errcheck
		return
	}
	c.Reply(f, res) //nolint:errcheck
}
