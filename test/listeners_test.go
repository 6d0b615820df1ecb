package test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestListenersSurviveDescriptorExhaustion: when the node runs out of file
// descriptors, accept fails (EMFILE) on every listener a client reaches. Once
// descriptors are free again, SMTP, POP3 and IMAP must all greet new clients:
// a listener that gave up on the error would leave the node without that
// protocol until it was restarted.
func TestListenersSurviveDescriptorExhaustion(t *testing.T) {
	c := harness.New(t, harness.Options{Nodes: 1})
	n := c.Nodes[0]
	c.WaitLeader(30 * time.Second)
	greets := map[int]string{harness.SMTPPort: "220 ", harness.POP3Port: "+OK", harness.IMAPPort: "* OK"}
	for port, want := range greets {
		if err := greeting(n.Addr(port), want); err != nil {
			t.Fatalf("before: %v", err)
		}
	}
	limit := limitDescriptors(t, n, 20)

	// Hold IMAP sessions until the node has no descriptor left, then knock
	// on every listener, so that each one's accept fails.
	var conns []net.Conn
	defer func() {
		for _, k := range conns {
			k.Close()
		}
	}()
	for range 60 {
		k, err := net.DialTimeout("tcp", n.Addr(harness.IMAPPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, k)
	}
	for _, port := range []int{harness.SMTPPort, harness.POP3Port} {
		for range 3 {
			k, err := net.DialTimeout("tcp", n.Addr(port), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, k)
		}
	}
	var mu sync.Mutex
	greeted := 0
	var wg sync.WaitGroup
	for _, k := range conns[:60] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.SetReadDeadline(time.Now().Add(3 * time.Second))
			if l, err := bufio.NewReader(k).ReadString('\n'); err == nil && strings.HasPrefix(l, "* OK") {
				mu.Lock()
				greeted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if greeted == 60 {
		t.Fatalf("all 60 IMAP sessions were greeted: the descriptor limit %d did not bite", limit)
	}
	harness.Eventually(t, 30*time.Second, "accept failing on IMAP and POP3", func() error {
		for _, srv := range []string{"server=imap", "server=pop3"} {
			found := false
			for _, l := range n.Grep("accept failed") {
				found = found || strings.Contains(l, srv)
			}
			if !found {
				return fmt.Errorf("no accept failure logged with %s", srv)
			}
		}
		return nil
	})
	t.Logf("%d of 60 IMAP sessions greeted at a limit of %d descriptors", greeted, limit)

	// Descriptors free again: every protocol greets a new client.
	for _, k := range conns {
		k.Close()
	}
	conns = nil
	for port, want := range greets {
		harness.Eventually(t, 30*time.Second, fmt.Sprintf("a greeting on port %d", port), func() error {
			return greeting(n.Addr(port), want)
		})
	}
}

// TestClusterPortSurvivesDescriptorExhaustion: a node that ran out of file
// descriptors, its cluster port failing to accept, must take its peers'
// connections again once descriptors are free. Otherwise it is cut off:
// restarted peers cannot reach it, and it falls behind for good.
func TestClusterPortSurvivesDescriptorExhaustion(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	victim := c.Followers(leader)[0]
	limitDescriptors(t, victim, 20)
	// Connections that never start TLS hold a descriptor each until the
	// handshake deadline; past the limit, accept fails.
	var conns []net.Conn
	for range 40 {
		k, err := net.DialTimeout("tcp", victim.Addr(harness.ClusterPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, k)
	}
	harness.Eventually(t, 30*time.Second, "accept failing on the cluster port", func() error {
		for _, l := range victim.Grep("accept failed") {
			if strings.Contains(l, "server=cluster") {
				return nil
			}
		}
		return fmt.Errorf("no accept failure logged on the cluster port")
	})
	for _, k := range conns {
		k.Close()
	}
	// The other two restart, so that every connection to the victim is new,
	// and the cluster goes on writing.
	for _, n := range c.Nodes {
		if n != victim {
			n.Stop()
			n.Start()
		}
	}
	l := c.WaitLeader(60 * time.Second)
	if l == victim {
		l = c.Followers(victim)[0]
	}
	l.MustCLI("domain", "add", "after-exhaustion.example")
	waitDomain(t, c, "after-exhaustion.example")
	verifyClean(t, l, 3)
}

// TestConnectionLimits: with --max-connections-per-ip 3, each mail protocol
// takes three sessions from one address and turns the fourth away with its
// own "try again later" reply; another address still gets in, and a freed
// place is taken again.
func TestConnectionLimits(t *testing.T) {
	c := harness.New(t, harness.Options{Nodes: 1, Args: []string{"--max-connections-per-ip", "3"}})
	n := c.Nodes[0]
	c.WaitLeader(30 * time.Second)
	other := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(harness.FreeLoopback(t, harness.IMAPPort))}, Timeout: 5 * time.Second}
	for _, p := range []struct {
		port           int
		greet, refusal string
	}{
		{harness.SMTPPort, "220 ", "421 4.7.0 "},
		{harness.IMAPPort, "* OK", "* BYE [UNAVAILABLE] "},
		{harness.POP3Port, "+OK", "-ERR [SYS/TEMP] "},
	} {
		addr := n.Addr(p.port)
		var held []net.Conn
		for range 3 {
			k, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			if l, err := firstLine(k); err != nil || !strings.HasPrefix(l, p.greet) {
				t.Fatalf("port %d: session within the limit got %q %v", p.port, l, err)
			}
			held = append(held, k)
		}
		k, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		l, err := firstLine(k)
		k.Close()
		if err != nil || !strings.HasPrefix(l, p.refusal) {
			t.Errorf("port %d: a fourth session from one address got %q %v, want %q", p.port, l, err, p.refusal)
		}
		if k, err := other.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		} else {
			l, err := firstLine(k)
			k.Close()
			if err != nil || !strings.HasPrefix(l, p.greet) {
				t.Errorf("port %d: another address got %q %v", p.port, l, err)
			}
		}
		held[0].Close()
		harness.Eventually(t, 10*time.Second, fmt.Sprintf("port %d takes a session in the freed place", p.port), func() error {
			return greeting(addr, p.greet)
		})
	}
}

// firstLine reads the first line a server sends.
func firstLine(k net.Conn) (string, error) {
	k.SetReadDeadline(time.Now().Add(5 * time.Second))
	return bufio.NewReader(k).ReadString('\n')
}

// limitDescriptors lowers a running node's descriptor limit (soft and hard)
// to those it has open plus spare, and returns the limit.
func limitDescriptors(t *testing.T, n *harness.Node, spare int) int {
	t.Helper()
	pid := n.Pid()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	limit := len(fds) + spare
	if out, err := exec.Command("prlimit", "--pid", fmt.Sprint(pid), fmt.Sprintf("--nofile=%d:%d", limit, limit)).CombinedOutput(); err != nil {
		t.Fatalf("prlimit (util-linux): %v %s", err, out)
	}
	return limit
}

// greeting connects to addr and checks that the first line starts with want.
func greeting(addr, want string) error {
	k, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer k.Close()
	k.SetReadDeadline(time.Now().Add(3 * time.Second))
	l, err := bufio.NewReader(k).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if !strings.HasPrefix(l, want) {
		return fmt.Errorf("%s greeted %q, want %q", addr, l, want)
	}
	return nil
}
