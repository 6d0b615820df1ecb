package harness

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// host runs a cluster's nodes: as processes on loopback addresses
// (processHost), or as containers on a private Docker network
// (dockerHost). Tests see only Cluster and Node, the same for both.
type host interface {
	// ip is the address of the i-th node (from 1).
	ip(i int) string
	// start starts n (again, keeping its data); done is closed when it ends.
	start(n *Node) (done chan struct{}, err error)
	// signal sends sig to a running n.
	signal(n *Node, sig syscall.Signal) error
	// exitCode is n's exit code once done is closed.
	exitCode(n *Node) int
	// stopped is called after n ended (to close its log, say).
	stopped(n *Node)
	// freeze pauses (true) or thaws n.
	freeze(n *Node, frozen bool) error
	// log is what n has written so far, over all its starts.
	log(n *Node) string
	// drop makes packets from one node to another be dropped (a share
	// prob of them, all when 0), and returns how to undo it.
	drop(from, to *Node, prob float64) (undo func(), err error)
	// redirect sends the connections from opens to to's cluster port to
	// addr instead (a link proxy), from before from starts.
	redirect(from, to *Node, addr string) error
	// proxyIP is the address link proxies listen on, reachable by nodes.
	proxyIP() string
	// peerIP is an address of this host, free at port (any when 0), that
	// the nodes reach.
	peerIP(port int) string
	// close removes what the host made (the nodes are already killed).
	close()
}

// processHost runs each node as a process of the flotilla binary on its
// own loopback address 127.A.B.n, so every node uses the standard test
// ports and a node can be cut off with iptables rules on its address.
type processHost struct {
	t      T
	subnet string // 127.A.B.
	mu     sync.Mutex
	rules  []rule
}

type rule struct {
	table string
	spec  []string
}

func newProcessHost(t T) *processHost {
	return &processHost{t: t, subnet: freeSubnet(t)}
}

// freeSubnet picks 127.A.B. with nothing listening on its first addresses.
func freeSubnet(t T) string {
	for i := 0; i < 50; i++ {
		a, _ := rand.Int(rand.Reader, big.NewInt(150))
		b, _ := rand.Int(rand.Reader, big.NewInt(250))
		subnet := fmt.Sprintf("127.%d.%d.", 100+a.Int64(), 1+b.Int64())
		ok := true
		for n := 1; n <= 8 && ok; n++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("%s%d:%d", subnet, n, ClusterPort))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return subnet
		}
	}
	t.Fatal("no free loopback subnet")
	return ""
}

func (h *processHost) ip(i int) string { return fmt.Sprintf("%s%d", h.subnet, i) }

func (h *processHost) start(n *Node) (chan struct{}, error) {
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== start %s at %s\n", n.ID, time.Now().Format(time.RFC3339Nano))
	bin := n.Bin
	if bin == "" {
		bin = Binary(h.t)
	}
	cmd := Command(bin, n.args()...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", n.ID, err)
	}
	done := make(chan struct{})
	n.cmd, n.logf = cmd, f
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return done, nil
}

func (h *processHost) signal(n *Node, sig syscall.Signal) error {
	if n.cmd == nil {
		return errors.New("not started")
	}
	if sig != syscall.SIGKILL {
		_ = n.cmd.Process.Signal(syscall.SIGCONT) // a stopped process would not act on it
	}
	return n.cmd.Process.Signal(sig)
}

func (h *processHost) exitCode(n *Node) int { return n.cmd.ProcessState.ExitCode() }

func (h *processHost) stopped(n *Node) {
	if n.logf != nil {
		n.logf.Close()
	}
}

func (h *processHost) freeze(n *Node, frozen bool) error {
	sig := syscall.SIGCONT
	if frozen {
		sig = syscall.SIGSTOP
	}
	if n.cmd == nil {
		return errors.New("not started")
	}
	return n.cmd.Process.Signal(sig)
}

func (h *processHost) log(n *Node) string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

func (h *processHost) drop(from, to *Node, prob float64) (func(), error) {
	spec := append([]string{"INPUT", "-s", from.IP, "-d", to.IP}, dropSpec(prob)...)
	return h.iptables("filter", spec)
}

func (h *processHost) redirect(from, to *Node, addr string) error {
	_, err := h.iptables("nat", []string{"OUTPUT", "-s", from.IP, "-d", to.IP, "-p", "tcp",
		"--dport", fmt.Sprint(ClusterPort), "-j", "DNAT", "--to-destination", addr})
	return err
}

func (h *processHost) proxyIP() string { return "127.0.0.1" }

func (h *processHost) peerIP(port int) string { return FreeLoopback(h.t, port) }

// iptables inserts a rule into the host's tables; undo deletes it.
func (h *processHost) iptables(table string, spec []string) (func(), error) {
	args := append([]string{"-w", "-t", table, "-I"}, spec...)
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
	}
	r := rule{table, spec}
	h.mu.Lock()
	h.rules = append(h.rules, r)
	h.mu.Unlock()
	return func() { h.delete(r) }, nil
}

func (h *processHost) delete(r rule) {
	_ = exec.Command("iptables", append([]string{"-w", "-t", r.table, "-D"}, r.spec...)...).Run()
}

func (h *processHost) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.rules {
		h.delete(r) // one already undone fails harmlessly
	}
}
