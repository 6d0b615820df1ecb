// Package clustertest starts a real one-node cluster inside a test process,
// so that protocol packages test against the same store and commands as
// production, without mocks.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// New starts a single-node cluster in t.TempDir() on 127.0.0.1 and waits
// until it leads; tweaks change its configuration first. It is shut down
// when the test ends.
func New(t testing.TB, tweaks ...func(*cluster.Config)) *cluster.Node {
	t.Helper()
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if err := cluster.TLSInit(tlsDir, []string{"node"}, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	level := slog.LevelWarn
	if os.Getenv("FLOTILLA_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	// Free ports are found by binding and releasing them, so another test
	// process can take one before the node binds it: try again then.
	var n *cluster.Node
	for attempt := 0; ; attempt++ {
		var err error
		cfg := cluster.Config{
			NodeID: "node", DataDir: filepath.Join(dir, "data"), BindAddr: "127.0.0.1",
			ClusterPort: freePort(t, "tcp"), GossipPort: freePort(t, "udp"), BootstrapExpect: 1,
			TLS:    cluster.TLSFiles{CA: filepath.Join(tlsDir, "ca.pem"), Cert: filepath.Join(tlsDir, "node.pem"), Key: filepath.Join(tlsDir, "node-key.pem")},
			NoSync: true, HeartbeatTimeout: 200 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level})),
		}
		for _, f := range tweaks {
			f(&cfg)
		}
		n, err = cluster.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = n.Start(context.Background())
		if err == nil {
			break
		}
		_ = n.Shutdown(context.Background())
		// memberlist formats its listener errors with %v, losing the errno.
		inUse := errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
		if attempt == 5 || !inUse {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	deadline := time.Now().Add(20 * time.Second)
	for !n.IsLeader() || n.ReadIndex(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("test node did not become leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// freePort finds a port free for both TCP and UDP (gossip uses both).
func freePort(t testing.TB, _ string) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

// Propose applies a command and fails the test on error.
func Propose(t testing.TB, n *cluster.Node, c command.Command) command.Response {
	t.Helper()
	resp, _, err := n.Propose(context.Background(), c)
	if err != nil {
		t.Fatalf("propose %s: %v", c.Type(), err)
	}
	return resp
}

// AddUser creates a domain (if needed) and a user with the given secrets.
func AddUser(t testing.TB, n *cluster.Node, address string, secrets storage.Secrets) storage.User {
	t.Helper()
	_, domain, err := storage.NormalizeAddress(address, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.Propose(context.Background(), &command.AddDomain{Name: domain}); err != nil && !errors.Is(err, storage.ErrExists) {
		t.Fatal(err)
	}
	Propose(t, n, &command.AddUser{Address: address, Secrets: secrets})
	var u storage.User
	if err := n.Store().View(func(tx *storage.Tx) error {
		u, err = tx.User(address)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return u
}
