package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/admin"
)

// dockerIPs are the addresses scripts/cluster-up.sh gives flotilla-1..3.
var dockerIPs = []string{"172.28.5.11", "172.28.5.12", "172.28.5.13"}

// TestContainerCluster runs the Docker cluster of scripts/cluster-up.sh (the
// FROM-scratch image, three containers on an internal network) and checks
// that it forms, replicates and verifies; scripts/cluster-down.sh removes it
// afterwards. It needs root (to install and start Docker if missing) and
// fails, rather than skips, when Docker cannot be made to work; set
// FLOTILLA_SKIP_DOCKER=1 to skip it.
func TestContainerCluster(t *testing.T) {
	if os.Getenv("FLOTILLA_SKIP_DOCKER") == "1" {
		t.Skip("FLOTILLA_SKIP_DOCKER=1")
	}
	root := dockerModuleRoot(t)

	// Bounded: 20 minutes (a fresh machine installs Docker and builds the
	// binary cold), less when go test's own -timeout comes sooner, keeping
	// two minutes of it for cluster-down.
	budget := 20 * time.Minute
	if dl, ok := t.Deadline(); ok {
		if left := time.Until(dl) - 2*time.Minute; left < budget {
			budget = left
		}
	}
	if budget < time.Minute {
		t.Fatalf("go test -timeout leaves %v: too little to run a container cluster", budget)
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()

	// Container, volume and network names are fixed: one such test at a time
	// on this machine (another checkout's go test ./... included).
	unlock := dockerLock(ctx, t, filepath.Join(os.TempDir(), "flotilla-container-cluster.lock"))
	t.Cleanup(unlock)

	var out dockerOutput // everything the scripts and docker printed
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if err := dockerScript(dctx, root, &out, "scripts/cluster-down.sh"); err != nil {
			t.Errorf("scripts/cluster-down.sh: %v", err)
		}
		if t.Failed() {
			t.Logf("output of the scripts and docker:\n%s", out.String())
		}
	})
	t.Cleanup(func() { // runs before cluster-down: the containers still exist
		if t.Failed() {
			lctx, lcancel := context.WithTimeout(context.Background(), time.Minute)
			defer lcancel()
			for _, args := range [][]string{{"ps", "-a", "--filter", "name=flotilla-"},
				{"logs", "--tail", "40", "flotilla-1"}, {"logs", "--tail", "40", "flotilla-2"},
				{"logs", "--tail", "40", "flotilla-3"}} {
				fmt.Fprintf(&out, "\n$ docker %s\n", strings.Join(args, " "))
				cmd := exec.CommandContext(lctx, "docker", args...)
				cmd.Stdout, cmd.Stderr = &out, &out
				_ = cmd.Run()
			}
		}
	})

	if err := dockerScript(ctx, root, &out, "scripts/cluster-up.sh"); err != nil {
		t.Fatalf("scripts/cluster-up.sh: %v", err)
	}

	// A leader and three healthy voters, as flotilla-1 sees it.
	dockerEventually(ctx, t, time.Minute, "a leader and 3 healthy voters", func() error {
		var st cluster.Status
		if err := dockerJSON(ctx, &out, &st, "flotilla-1", "cluster", "status", "--data-dir", "/data", "--json"); err != nil {
			return err
		}
		healthy := 0
		for _, n := range st.Nodes {
			if n.Voter && n.Healthy {
				healthy++
			}
		}
		if st.Leader == "" || healthy != 3 || len(st.Nodes) != 3 {
			return fmt.Errorf("leader %q, %d nodes, %d healthy voters", st.Leader, len(st.Nodes), healthy)
		}
		return nil
	})

	// The admin API answers on each container's address, from this host,
	// with the token cluster-up.sh keeps, and refuses requests without it.
	tok, err := os.ReadFile(filepath.Join(root, "flotilla-run", "docker", "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range dockerIPs {
		url := "http://" + ip + ":8080/v1/cluster/status"
		dockerEventually(ctx, t, 30*time.Second, "admin API at "+url, func() error {
			if code, err := dockerHTTPGet(ctx, url, ""); err != nil || code != http.StatusUnauthorized {
				return fmt.Errorf("without the token: status %d, err %v; want 401", code, err)
			}
			code, err := dockerHTTPGet(ctx, url, strings.TrimSpace(string(tok)))
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("with the token: status %d, err %v; want 200", code, err)
			}
			return nil
		})
	}

	// A domain added through node 2 reaches node 3.
	if _, err := dockerExec(ctx, &out, "flotilla-2", "domain", "add", "example.org", "--data-dir", "/data"); err != nil {
		t.Fatalf("domain add through flotilla-2: %v", err)
	}
	dockerEventually(ctx, t, 30*time.Second, "example.org listed by flotilla-3", func() error {
		var ds []admin.Domain
		if err := dockerJSON(ctx, &out, &ds, "flotilla-3", "domain", "list", "--data-dir", "/data", "--json"); err != nil {
			return err
		}
		for _, d := range ds {
			if d.Name == "example.org" {
				return nil
			}
		}
		return fmt.Errorf("domains %v", ds)
	})

	// Every node holds the same state: cluster verify exits 0.
	dockerEventually(ctx, t, 30*time.Second, "cluster verify in flotilla-3 exits 0", func() error {
		_, err := dockerExec(ctx, &out, "flotilla-3", "cluster", "verify", "--data-dir", "/data")
		return err
	})
}

// dockerModuleRoot is the repository root: this file's directory's parent.
func dockerModuleRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	root := filepath.Dir(filepath.Dir(file))
	if _, err := os.Stat(filepath.Join(root, "scripts", "cluster-up.sh")); err != nil {
		t.Fatalf("module root %s: %v", root, err)
	}
	return root
}

// dockerLock takes an exclusive lock on path, waiting while ctx allows,
// and returns its release.
func dockerLock(ctx context.Context, t *testing.T, path string) func() {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("lock %s: %v", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			t.Fatalf("lock %s: %v", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			t.Fatalf("another container cluster test held %s for too long", path)
		case <-time.After(time.Second):
		}
	}
}

// dockerScript runs one of the repository's scripts from the root, its output
// going to out; its whole process group dies if ctx ends first.
func dockerScript(ctx context.Context, root string, out *dockerOutput, script string, args ...string) error {
	fmt.Fprintf(out, "\n$ %s %s\n", script, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(root, script), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "FLOTILLA_UP_TIMEOUT=180")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return err
	}
	return nil
}

// dockerExec runs /flotilla ARGS in a container and returns its standard
// output; the command and its standard error also go to out.
func dockerExec(ctx context.Context, out *dockerOutput, container string, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	full := append([]string{"exec", container, "/flotilla"}, args...)
	fmt.Fprintf(out, "\n$ docker %s\n", strings.Join(full, " "))
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(cctx, "docker", full...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out.Write(stderr.Bytes())
	if err != nil {
		out.Write(stdout.Bytes())
		return stdout.String(), fmt.Errorf("docker %s: %v: %s", strings.Join(full, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// dockerJSON runs /flotilla ARGS in a container and decodes its output.
func dockerJSON(ctx context.Context, out *dockerOutput, v any, container string, args ...string) error {
	s, err := dockerExec(ctx, out, container, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("decoding %q: %v", s, err)
	}
	return nil
}

// dockerHTTP reaches the containers directly, never through a proxy.
var dockerHTTP = &http.Client{Transport: &http.Transport{Proxy: nil}}

func dockerHTTPGet(ctx context.Context, url, token string) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, "GET", url, nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := dockerHTTP.Do(req)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

// dockerEventually retries f every half second until it succeeds, failing the
// test with f's last error after d (or when ctx ends).
func dockerEventually(ctx context.Context, t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// dockerOutput is a bytes.Buffer that several writers may share.
type dockerOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *dockerOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *dockerOutput) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
