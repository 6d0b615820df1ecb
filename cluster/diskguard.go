package cluster

import (
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"
)

// DiskGuard tells the mail protocols when the file system holding the data
// dir runs low, so that they turn new mail away (SMTP's MAIL, IMAP's
// APPEND, collection from ISP mailboxes) before the node reaches the end
// of its disk: there its state machine can only stop, as it must not skip
// an entry. It asks the file system at most once a second.
type DiskGuard struct {
	dir     string
	minFree int64
	log     *slog.Logger
	free    func(dir string) (int64, error) // statfs; a fake in tests

	mu      sync.Mutex
	checked time.Time
	low     bool
}

// NewDiskGuard guards dir, low below minFree bytes free.
func NewDiskGuard(dir string, minFree int64, log *slog.Logger) *DiskGuard {
	return &DiskGuard{dir: dir, minFree: minFree, log: log, free: diskFree}
}

// Low reports whether less than the minimum is free. When the file system
// cannot be asked it says no: the store will report what it cannot write.
func (g *DiskGuard) Low() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.checked.IsZero() && time.Since(g.checked) < time.Second {
		return g.low
	}
	g.checked = time.Now()
	free, err := g.free(g.dir)
	if err != nil {
		g.log.Warn("cannot read the free disk space", "err", err)
		g.low = false
		return false
	}
	if low := free < g.minFree; low != g.low {
		g.low = low
		if low {
			g.log.Warn("disk nearly full: refusing new mail", "free", free, "min_free", g.minFree, "dir", g.dir)
		} else {
			g.log.Info("disk has room again: taking new mail", "free", free, "dir", g.dir)
		}
	}
	return g.low
}

// diskFree is the space left to an unprivileged writer in the file system
// holding dir.
func diskFree(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
