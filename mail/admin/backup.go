package admin

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
)

// handleBackup streams a backup of this node's state with every body.
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request) {
	// A backup takes as long as the mail takes to stream.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/octet-stream")
	if _, err := s.Node.Backup(w); err != nil {
		// Headers are gone; the client sees a truncated stream, which
		// restore and verify refuse (the checksum comes last).
		s.Log.Error("backup failed", "err", err)
	}
}

// restoreBackup receives a backup, spools it to the data dir and installs
// it through the leader.
func (s *Server) restoreBackup(w http.ResponseWriter, r *http.Request) (any, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	dir := filepath.Dir(s.Node.Store().Path())
	f, err := os.CreateTemp(dir, "restore-upload-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	n, err := io.Copy(f, r.Body)
	if err != nil {
		return nil, fmt.Errorf("%w: upload: %v", errBadRequest, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: empty backup", errBadRequest)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := s.Node.RestoreBackup(r.Context(), f.Name()); err != nil {
		if errors.Is(err, storage.ErrInvalid) {
			return nil, err
		}
		return nil, fmt.Errorf("restore: %w", err)
	}
	return struct {
		Bytes int64 `json:"bytes"`
	}{n}, nil
}
