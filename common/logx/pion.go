package logx

import (
	"github.com/pion/logging"
	"github.com/rs/zerolog"
)

// Pion adapts l to pion's logging.LoggerFactory (turn.ServerConfig,
// turn.ClientConfig, vnet.RouterConfig). Each scope pion asks for ("turn",
// "turnc", "vnet", ...) gets a child logger with lib=pion/<scope>; pion's
// levels map one to one onto zerolog's. Formatting is skipped when the
// level is disabled, so pion's per-packet Debugf/Tracef calls cost little
// at Info.
//
// pion logs some client mistakes (a request for an unknown allocation, a
// malformed datagram) at Error. Callers that face the Internet should hand
// in a sampled logger (zerolog.BurstSampler) so a hostile client cannot
// flood the log.
func Pion(l zerolog.Logger) logging.LoggerFactory { return pionFactory{l: l} }

type pionFactory struct{ l zerolog.Logger }

func (f pionFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{l: f.l.With().Str("lib", "pion/"+scope).Logger()}
}

// pionLogger implements logging.LeveledLogger. It is a value type holding
// a zerolog.Logger, which is safe for concurrent use.
type pionLogger struct{ l zerolog.Logger }

func (p pionLogger) Trace(msg string)                  { p.l.Trace().Msg(msg) }
func (p pionLogger) Tracef(format string, args ...any) { p.l.Trace().Msgf(format, args...) }
func (p pionLogger) Debug(msg string)                  { p.l.Debug().Msg(msg) }
func (p pionLogger) Debugf(format string, args ...any) { p.l.Debug().Msgf(format, args...) }
func (p pionLogger) Info(msg string)                   { p.l.Info().Msg(msg) }
func (p pionLogger) Infof(format string, args ...any)  { p.l.Info().Msgf(format, args...) }
func (p pionLogger) Warn(msg string)                   { p.l.Warn().Msg(msg) }
func (p pionLogger) Warnf(format string, args ...any)  { p.l.Warn().Msgf(format, args...) }
func (p pionLogger) Error(msg string)                  { p.l.Error().Msg(msg) }
func (p pionLogger) Errorf(format string, args ...any) { p.l.Error().Msgf(format, args...) }
