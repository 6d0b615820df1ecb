package cluster

import (
	"errors"
	"log/slog"
	"testing"
	"time"
)

func TestDiskGuard(t *testing.T) {
	var free int64 = 100
	var err error
	asked := 0
	g := NewDiskGuard("/data", 50, slog.New(slog.DiscardHandler))
	g.free = func(string) (int64, error) { asked++; return free, err }
	if g.Low() {
		t.Fatal("low with room")
	}
	free = 10
	if g.Low() || asked != 1 {
		t.Fatalf("asked the file system again within a second (%d times)", asked)
	}
	g.checked = g.checked.Add(-time.Second)
	if !g.Low() {
		t.Fatal("not low below the minimum")
	}
	g.checked = g.checked.Add(-time.Second)
	err = errors.New("statfs failed")
	if g.Low() {
		t.Fatal("low when the file system cannot be asked")
	}
	// The real statfs on a directory that exists.
	if n, err := diskFree(t.TempDir()); err != nil || n <= 0 {
		t.Fatalf("diskFree: %d %v", n, err)
	}
}
