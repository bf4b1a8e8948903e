package record

import "errors"

// Callers branch on these: a replica answers ErrInvalid and ErrTooLarge with
// a protocol error to the writer, and ErrMismatch means a bug in the caller
// (two different resources passed to Merge).
var (
	// ErrInvalid marks a record or entry that breaks the model (bad kind,
	// non-canonical name, wrong payload, oversize or injected string) or that
	// does not decode.
	ErrInvalid = errors.New("invalid record")
	// ErrTooLarge marks an encoding longer than MaxEncodedLen.
	ErrTooLarge = errors.New("record too large")
	// ErrMismatch is returned by Merge for records of different kind or name.
	ErrMismatch = errors.New("record kind or name mismatch")
)
