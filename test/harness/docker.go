package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// dockerHost runs each node as a container of a FROM scratch image holding
// the static flotilla binary (scripts/image.sh builds it), on a private
// Docker network of its own (--internal: nothing leaves it). The cluster's
// directory is bind-mounted at the same path, so a node's data dir,
// certificates and control socket have the same paths inside and out: the
// host's flotilla binary administers a node as on the process tier.
//
// Each node's network namespace belongs to a pause container that lives as
// long as the cluster; the node's container joins it. Its address, and the
// iptables rules of cuts and link proxies (set in that namespace), outlive
// the node's kills and restarts. A restart is a fresh container from the
// same image on the same data: the old one's log is kept in the node's
// log file first.
type dockerHost struct {
	t       T
	dir     string
	image   string
	network string
	prefix  string // 172.30.X.
	gateway string

	mu    sync.Mutex
	exits map[*Node]int
}

// labelKey marks what the harness makes, with the test process's pid, so
// that a later run can remove what a killed one left behind.
const labelKey = "org.flotilla.harness"

// imageKey labels the harness's images.
const imageKey = "org.flotilla.harness.image"

// clusterKey names a container's cluster (its network; with "-net" for the
// pause containers).
const clusterKey = "org.flotilla.harness.cluster"

func newDockerHost(t T, dir string) *dockerHost {
	t.Helper()
	image, err := harnessImage()
	if err != nil {
		t.Fatalf("container tier: %v", err)
	}
	removeStale()
	h := &dockerHost{t: t, dir: dir, image: image, exits: map[*Node]int{}}
	if err := h.makeNetwork(); err != nil {
		t.Fatalf("container tier: %v", err)
	}
	return h
}

var (
	imageOnce sync.Once
	imageName string
	imageErr  error
)

// harnessImage builds, once per test process, the image: scripts/image.sh's
// product image of a static flotilla binary, plus the pause program. Its tag
// is the hash of both binaries, so concurrent test runs of different
// checkouts never share a tag with different contents.
func harnessImage() (string, error) {
	imageOnce.Do(func() { imageName, imageErr = buildHarnessImage() })
	return imageName, imageErr
}

func buildHarnessImage() (string, error) {
	dir, err := os.MkdirTemp("", "flotilla-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	root := moduleRoot()
	build := func(out, pkg string) error {
		cmd := exec.Command("go", "build", "-trimpath", "-o", out,
			"-ldflags", "-X github.com/flotilla-mail/flotilla/cluster.BuildVersion=test", pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v: %s", pkg, err, b)
		}
		return nil
	}
	if err := build(filepath.Join(dir, "flotilla"), "./cmd/flotilla"); err != nil {
		return "", err
	}
	if err := build(filepath.Join(dir, "pause"), "./test/harness/pause"); err != nil {
		return "", err
	}
	sum := sha256.New()
	for _, f := range []string{"flotilla", "pause"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", err
		}
		sum.Write(b)
	}
	tag := "flotilla-harness:" + hex.EncodeToString(sum.Sum(nil))[:12]
	if exec.Command("docker", "image", "inspect", tag).Run() == nil {
		return tag, nil
	}
	// image.sh also installs Docker and starts dockerd when missing.
	base := tag + "-base"
	cmd := exec.Command(filepath.Join(root, "scripts", "image.sh"), "--tag", base, "--binary", filepath.Join(dir, "flotilla"))
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("scripts/image.sh: %v: %s", err, b)
	}
	df := "FROM " + base + "\nCOPY pause /pause\nLABEL " + imageKey + "=1\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return "", err
	}
	cmd = exec.Command("docker", "build", "-q", "-t", tag, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("docker build %s: %v: %s", tag, err, b)
	}
	// The base tag is only a step; images of earlier builds go once they
	// are an hour old (one in use by a running test stays: prune keeps it).
	_, _ = docker("rmi", base)
	_, _ = docker("image", "prune", "-a", "-f", "--filter", "label="+imageKey, "--filter", "until=1h")
	return tag, nil
}

// removeStale removes containers and networks left by harness runs whose
// test process is gone.
func removeStale() {
	dead := func(pid string) bool {
		p, err := strconv.Atoi(pid)
		return err != nil || syscall.Kill(p, 0) == syscall.ESRCH
	}
	out, _ := docker("ps", "-a", "--filter", "label="+labelKey, "--format", `{{.Names}} {{.Label "`+labelKey+`"}}`)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && dead(f[1]) {
			_, _ = docker("rm", "-f", "-v", f[0])
		}
	}
	out, _ = docker("network", "ls", "--filter", "label="+labelKey, "--format", `{{.Name}} {{.Label "`+labelKey+`"}}`)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && dead(f[1]) {
			_, _ = docker("network", "rm", f[0])
		}
	}
}

// makeNetwork creates an internal network on a free 172.30.X.0/24.
func (h *dockerHost) makeNetwork() error {
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	h.network = "flotilla-h" + hex.EncodeToString(id)
	var last error
	for i := 0; i < 20; i++ {
		x, _ := rand.Int(rand.Reader, big.NewInt(256))
		prefix := fmt.Sprintf("172.30.%d.", x.Int64())
		_, err := docker("network", "create", "--driver", "bridge", "--internal",
			"--subnet", prefix+"0/24", "--label", labelKey+"="+strconv.Itoa(os.Getpid()), h.network)
		if err == nil {
			h.prefix = prefix
			gw, err := docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", h.network)
			if h.gateway = strings.TrimSpace(gw); err != nil || h.gateway == "" {
				h.gateway = prefix + "1"
			}
			return nil
		}
		last = err // most likely the subnet is taken: try another
	}
	return fmt.Errorf("docker network create: %w", last)
}

func (h *dockerHost) ip(i int) string { return fmt.Sprintf("%s%d", h.prefix, 10+i) }

func (h *dockerHost) proxyIP() string { return h.gateway }

// peerIP is the bridge's address on the host, the only one the nodes reach.
func (h *dockerHost) peerIP(int) string { return h.gateway }

// netns returns the pid holding n's network namespace, starting n's pause
// container the first time.
func (h *dockerHost) netns(n *Node) (int, error) {
	if n.netnsPid != 0 {
		return n.netnsPid, nil
	}
	name := h.network + "-" + n.ID + "-net"
	if _, err := docker("run", "-d", "--name", name, "--hostname", n.ID,
		"--network", h.network, "--ip", n.IP, "--label", labelKey+"="+strconv.Itoa(os.Getpid()),
		"--label", clusterKey+"="+h.network+"-net",
		"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"--entrypoint", "/pause", h.image); err != nil {
		return 0, err
	}
	out, err := docker("inspect", "-f", "{{.State.Pid}}", name)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || pid == 0 {
		return 0, fmt.Errorf("pid of %s: %q", name, out)
	}
	n.netnsPid = pid
	return pid, nil
}

func (h *dockerHost) start(n *Node) (chan struct{}, error) {
	if n.Bin != "" {
		return nil, errors.New("the container tier runs the image's binary; Node.Bin is for processes")
	}
	if _, err := h.netns(n); err != nil {
		return nil, err
	}
	h.keepLog(n)
	name := h.network + "-" + n.ID
	if n.container != "" {
		if _, err := docker("rm", "-f", "-v", n.container); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		return nil, err
	}
	// Root in the container (with no capabilities): the bind-mounted
	// directory is the test's, owned by root.
	args := []string{"run", "-d", "--name", name, "--network", "container:" + h.network + "-" + n.ID + "-net",
		"--label", labelKey + "=" + strconv.Itoa(os.Getpid()), "--label", clusterKey + "=" + h.network,
		"--user", "0:0", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"--mount", "type=bind,src=" + h.dir + ",dst=" + h.dir, h.image}
	// The clients are on the bridge, not on loopback: let them log in
	// without TLS, as on the process tier.
	args = append(append(args, n.args()...), "--allow-insecure-auth")
	if _, err := docker(args...); err != nil {
		return nil, err
	}
	n.container = name
	done := make(chan struct{})
	go func() {
		defer close(done)
		out, err := exec.Command("docker", "wait", name).Output()
		code, perr := strconv.Atoi(strings.TrimSpace(string(out)))
		if err != nil || perr != nil {
			code = -1
		}
		h.mu.Lock()
		h.exits[n] = code
		h.mu.Unlock()
	}()
	return done, nil
}

// keepLog appends the log of n's current container, if any, to its log
// file, before that container goes.
func (h *dockerHost) keepLog(n *Node) {
	if n.container == "" {
		return
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "=== container %s\n", n.container)
	cmd := exec.Command("docker", "logs", n.container)
	cmd.Stdout, cmd.Stderr = f, f
	_ = cmd.Run()
}

func (h *dockerHost) signal(n *Node, sig syscall.Signal) error {
	if n.container == "" {
		return errors.New("not started")
	}
	if sig != syscall.SIGKILL {
		_ = h.freeze(n, false)
	}
	_, err := docker("kill", "--signal", strconv.Itoa(int(sig)), n.container)
	return err
}

func (h *dockerHost) exitCode(n *Node) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.exits[n]
}

func (h *dockerHost) stopped(*Node) {}

func (h *dockerHost) freeze(n *Node, frozen bool) error {
	if n.container == "" {
		return errors.New("not started")
	}
	verb := "unpause"
	if frozen {
		verb = "pause"
	} else if st, _ := docker("inspect", "-f", "{{.State.Paused}}", n.container); strings.TrimSpace(st) != "true" {
		return nil
	}
	_, err := docker(verb, n.container)
	return err
}

func (h *dockerHost) log(n *Node) string {
	b, _ := os.ReadFile(n.LogPath)
	if n.container == "" {
		return string(b)
	}
	out, _ := exec.Command("docker", "logs", n.container).CombinedOutput()
	return string(b) + string(out)
}

func (h *dockerHost) drop(from, to *Node, prob float64) (func(), error) {
	pid, err := h.netns(to)
	if err != nil {
		return nil, err
	}
	spec := append([]string{"INPUT", "-s", from.IP}, dropSpec(prob)...)
	return nsIptables(pid, "filter", spec)
}

func (h *dockerHost) redirect(from, to *Node, addr string) error {
	pid, err := h.netns(from)
	if err != nil {
		return err
	}
	_, err = nsIptables(pid, "nat", []string{"OUTPUT", "-d", to.IP, "-p", "tcp",
		"--dport", strconv.Itoa(ClusterPort), "-j", "DNAT", "--to-destination", addr})
	return err
}

// nsIptables inserts a rule into the tables of the network namespace of
// process pid; undo deletes it. The rules go when the namespace does.
func nsIptables(pid int, table string, spec []string) (func(), error) {
	run := func(op string) error {
		args := append([]string{"-t", strconv.Itoa(pid), "-n", "iptables", "-w", "-t", table, op}, spec...)
		if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("nsenter %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("-I"); err != nil {
		return nil, err
	}
	return func() { _ = run("-D") }, nil
}

func (h *dockerHost) close() {
	// The nodes first, then the pause containers whose namespaces they use.
	for _, v := range []string{h.network, h.network + "-net"} {
		out, _ := docker("ps", "-a", "-q", "--filter", "label="+clusterKey+"="+v)
		if ids := strings.Fields(out); len(ids) > 0 {
			_, _ = docker(append([]string{"rm", "-f", "-v"}, ids...)...)
		}
	}
	if _, err := docker("network", "rm", h.network); err != nil {
		h.t.Errorf("container tier: %v", err)
	}
}

// docker runs the docker CLI, bounded, and returns its standard output.
func docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}
