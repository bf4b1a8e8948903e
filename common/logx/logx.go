// Package logx sets up zerolog and adapts it to the loggers our libraries
// want (memberlist's *log.Logger, sipgo's *slog.Logger, pion's
// LoggerFactory). Loggers are passed explicitly; nothing here is global.
//
// Field vocabulary, used by every package so lines can be grepped and
// joined: component, peer_id, sp_id, resource_id, aor, shard, txid,
// call_id, cseq, remote_addr, hops, frame, user, reason.
package logx

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Options selects the output format and level.
type Options struct {
	// Format is "json" (default) or "console" (human, slower).
	Format string
	// Level is a zerolog level name; "" means info.
	Level string
	// Out is where lines go; nil means stderr.
	Out io.Writer
	// Sample thins per-message lines (debug and trace) so that a busy
	// node cannot drown in its own logs: ParseSample syntax, "" means
	// DefaultSample, "off" keeps every line. Info and above are never
	// sampled; lifecycle lines therefore log at info.
	Sample string
}

// New builds the process's root logger.
func New(o Options) (zerolog.Logger, error) {
	out := o.Out
	if out == nil {
		out = os.Stderr
	}
	lvl := zerolog.InfoLevel
	if o.Level != "" {
		l, err := zerolog.ParseLevel(strings.ToLower(o.Level))
		if err != nil {
			return zerolog.Nop(), fmt.Errorf("log level %q: %w", o.Level, err)
		}
		lvl = l
	}
	switch o.Format {
	case "", "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339}
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: want json or console", o.Format)
	}
	sample := DefaultSample
	if o.Sample != "" {
		sample = o.Sample
	}
	sp, err := ParseSample(sample)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log sample %q: %w", sample, err)
	}
	l := zerolog.New(out).Level(lvl).With().Timestamp().Logger()
	if !sp.Off() && lvl <= zerolog.DebugLevel {
		l = l.Sample(newSampler(sp, l))
	}
	return l, nil
}

// Component returns a child logger scoped to one subsystem.
func Component(l zerolog.Logger, name string) zerolog.Logger {
	return l.With().Str("component", name).Logger()
}

// Memberlist adapts l to memberlist's *log.Logger, mapping its
// "[DEBUG] memberlist: ..." prefixes to zerolog levels.
func Memberlist(l zerolog.Logger) *log.Logger {
	return log.New(levelWriter{l: l.With().Str("lib", "memberlist").Logger()}, "", 0)
}

type levelWriter struct{ l zerolog.Logger }

func (w levelWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	lvl := zerolog.InfoLevel
	for _, m := range []struct {
		prefix string
		lvl    zerolog.Level
	}{{"[DEBUG]", zerolog.DebugLevel}, {"[INFO]", zerolog.InfoLevel}, {"[WARN]", zerolog.WarnLevel}, {"[ERR]", zerolog.ErrorLevel}, {"[ERROR]", zerolog.ErrorLevel}} {
		if strings.HasPrefix(msg, m.prefix) {
			lvl = m.lvl
			msg = strings.TrimSpace(strings.TrimPrefix(msg, m.prefix))
			break
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.l.WithLevel(lvl).Msg(msg)
	return len(p), nil
}

// Slog adapts l for sipgo and other slog users. String attributes longer
// than MaxAttrLen are cut: sipgo puts a whole unparsable datagram (up to
// 64 KiB of whatever a stranger sent) into the line that reports it.
func Slog(l zerolog.Logger) *slog.Logger {
	return slog.New(clipHandler{zerolog.NewSlogHandler(l)})
}

// MaxAttrLen bounds a string attribute of a library's log line.
const MaxAttrLen = 512

// Throttle bounds the lines l writes, whatever their level, to a burst
// of 20 a second, then one in a thousand: for lines that strangers can
// cause at will (sipgo logs every malformed datagram at error; a port
// scanner fails a TLS handshake per connection). Counters say how many
// there were; the lines show what they were like.
func Throttle(l zerolog.Logger) zerolog.Logger {
	return l.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second, NextSampler: &zerolog.BasicSampler{N: 1000}})
}

// clipHandler cuts long string attributes before the wrapped handler
// sees them.
type clipHandler struct{ h slog.Handler }

func (c clipHandler) Enabled(ctx context.Context, l slog.Level) bool { return c.h.Enabled(ctx, l) }

func (c clipHandler) Handle(ctx context.Context, r slog.Record) error {
	long := false
	r.Attrs(func(a slog.Attr) bool {
		long = a.Value.Kind() == slog.KindString && len(a.Value.String()) > MaxAttrLen
		return !long
	})
	if !long {
		return c.h.Handle(ctx, r)
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(clipAttr(a))
		return true
	})
	return c.h.Handle(ctx, out)
}

func (c clipHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for i := range as {
		as[i] = clipAttr(as[i])
	}
	return clipHandler{c.h.WithAttrs(as)}
}

func (c clipHandler) WithGroup(name string) slog.Handler { return clipHandler{c.h.WithGroup(name)} }

func clipAttr(a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindString {
		if s := a.Value.String(); len(s) > MaxAttrLen {
			return slog.String(a.Key, fmt.Sprintf("%s... (%d bytes)", s[:MaxAttrLen], len(s)))
		}
	}
	return a
}

// SetDefault sends the lines of libraries that log through slog.Default
// (sipgo's package-level warnings, e.g. about its connection reference
// counts) and the standard log package through l, so that they come out
// in the process's format, level and sampling instead of as bare text on
// stderr between JSON lines. They are throttled: sipgo's TCP and TLS
// transports log there (their logger cannot be set), a line or more for
// every connection a stranger opens and lets time out.
func SetDefault(l zerolog.Logger) {
	slog.SetDefault(Slog(Throttle(l.With().Str("lib", "default").Logger())))
}
