package auth

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// readBounded reads at most max bytes of path. Files we read are small by
// construction; a bigger one is a mistake (wrong path) or an attack, and
// either way must not make us allocate its size.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: more than %d bytes", errTooLarge, max)
	}
	return b, nil
}

// writeAtomic replaces path with data, mode 0600, through a temporary file
// in the same directory and a rename, so a reader never sees half a file
// and a crash leaves either the old or the new content.
func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp already uses 0600; Chmod makes it explicit and survives a
	// future change there.
	if err = tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// writeExclusive creates path with data, mode 0600, and fails with an error
// matching fs.ErrExist if it is already there: a secret or identity key must
// never be silently replaced, since that would lock the node out of its
// overlay or change its Peer-ID. The parent directory is created 0700.
func writeExclusive(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		// Remove the torn file so the next start creates a fresh one
		// instead of failing to parse it.
		return errors.Join(werr, os.Remove(path))
	}
	return nil
}
