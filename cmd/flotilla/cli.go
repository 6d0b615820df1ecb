package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/admin"
)

// cli is the administration side of the binary: a client of the admin API.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// conn is how a command reaches a node.
type conn struct {
	dataDir, addr, token string
	json                 bool
}

// flags defines the connection flags every admin command takes.
func (c *cli) flags(name string) (*flag.FlagSet, *conn) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	cn := &conn{}
	fs.StringVar(&cn.dataDir, "data-dir", "./flotilla-data", "reach the node whose data dir this is, through its control socket")
	fs.StringVar(&cn.addr, "addr", os.Getenv("FLOTILLA_ADDR"), "reach a node over HTTP instead, e.g. http://10.0.0.1:8080")
	fs.StringVar(&cn.token, "token", os.Getenv("FLOTILLA_TOKEN"), "API token for --addr (or FLOTILLA_TOKEN)")
	fs.BoolVar(&cn.json, "json", false, "print JSON")
	return fs, cn
}

// parse parses flags anywhere among the arguments and returns the others.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, exitError{2}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (cn *conn) client() (*http.Client, string) {
	if cn.addr != "" {
		return &http.Client{Timeout: 60 * time.Second}, strings.TrimRight(cn.addr, "/")
	}
	sock := filepath.Join(cn.dataDir, "control.sock")
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}, "http://control"
}

// do calls the API with a JSON body; a failure comes back as the API's
// error message.
func (cn *conn) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	return cn.doRaw(ctx, method, path, body, out)
}

// download streams a GET response into w.
func (cn *conn) download(ctx context.Context, path string, w io.Writer) (int64, error) {
	hc, base := cn.client()
	hc.Timeout = 0 // as long as the data takes
	req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
	if err != nil {
		return 0, err
	}
	if cn.token != "" {
		req.Header.Set("Authorization", "Bearer "+cn.token)
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		return 0, fmt.Errorf("%s: %s", res.Status, bytes.TrimSpace(b))
	}
	return io.Copy(w, res.Body)
}

// doRaw calls the API with a body sent as it is.
func (cn *conn) doRaw(ctx context.Context, method, path string, body io.Reader, out any) error {
	hc, base := cn.client()
	if _, ok := body.(*os.File); ok {
		hc.Timeout = 0 // uploads take as long as they take
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	if cn.token != "" {
		req.Header.Set("Authorization", "Bearer "+cn.token)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		if cn.addr == "" {
			return fmt.Errorf("cannot reach the node through %s (is it running? is --data-dir right?): %w",
				filepath.Join(cn.dataDir, "control.sock"), errors.Unwrap(err))
		}
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		var e admin.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s: %s", res.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (c *cli) printJSON(v any) {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (c *cli) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func usageErr(stderr io.Writer, msg string) error {
	fmt.Fprintln(stderr, "flotilla:", msg)
	return exitError{2}
}

func (c *cli) cluster(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr(c.stderr, "cluster: status, verify, snapshot, transfer-leadership, remove, tls-init or upgrade-check")
	}
	if args[0] == "tls-init" {
		return c.tlsInit(args[1:])
	}
	if args[0] == "recover" {
		return c.recoverCluster(args[1:])
	}
	fs, cn := c.flags("cluster " + args[0])
	var to string
	if args[0] == "transfer-leadership" {
		fs.StringVar(&to, "to", "", "node to hand leadership to (default: Raft's choice)")
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "status":
		var st cluster.Status
		if err := cn.do(ctx, "GET", "/v1/cluster/status", nil, &st); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(st)
			return nil
		}
		fmt.Fprintf(c.stdout, "cluster %s, leader %s (asked %s)\n", orDash(st.ClusterID), orDash(st.Leader), st.Self)
		var rows [][]string
		for _, n := range st.Nodes {
			rows = append(rows, []string{n.ID, n.State, yesNo(n.Voter), yesNo(n.Healthy), fmt.Sprint(n.AppliedIndex), orDash(n.Version), n.Address, n.Error})
		}
		c.table("NODE\tSTATE\tVOTER\tHEALTHY\tAPPLIED\tVERSION\tADDRESS\tERROR", rows)
		return nil
	case "verify":
		var rep cluster.VerifyReport
		if err := cn.do(ctx, "POST", "/v1/cluster/verify", struct{}{}, &rep); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(rep)
		} else {
			var rows [][]string
			for _, n := range rep.Nodes {
				mark := "ok"
				if n.Digest != rep.Digest {
					mark = "DIVERGES"
				}
				rows = append(rows, []string{n.ID, orDash(short(n.Digest)), mark, n.Error})
			}
			fmt.Fprintf(c.stdout, "state digests at index %d (leader's %s)\n", rep.Index, short(rep.Digest))
			c.table("NODE\tDIGEST\tRESULT\tERROR", rows)
		}
		if !rep.Consistent {
			fmt.Fprintf(c.stderr, "flotilla: cluster verify: nodes diverge or did not answer: %s\n", strings.Join(rep.Diverging, ", "))
			return exitError{1}
		}
		if !cn.json {
			fmt.Fprintln(c.stdout, "all nodes identical")
		}
		return nil
	case "transfer-leadership":
		var st cluster.Status
		if err := cn.do(ctx, "POST", "/v1/cluster/transfer-leadership", map[string]string{"to": to}, &st); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "leader is now %s\n", orDash(st.Leader))
		return nil
	case "upgrade-check":
		return c.upgradeCheck(ctx, cn)
	case "snapshot":
		var rep cluster.SnapshotReport
		if err := cn.do(ctx, "POST", "/v1/cluster/snapshot", struct{}{}, &rep); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(rep)
		} else {
			fmt.Fprintf(c.stdout, "snapshot at index %d: %d bytes in %s\n", rep.Index, rep.Bytes, rep.Duration)
		}
		return nil
	case "remove":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla cluster remove NODE")
		}
		if err := cn.do(ctx, "POST", "/v1/cluster/remove", map[string]string{"id": pos[0]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "removed %s\n", pos[0])
		return nil
	}
	return usageErr(c.stderr, "cluster: unknown subcommand "+args[0])
}

func (c *cli) tlsInit(args []string) error {
	fs := flag.NewFlagSet("cluster tls-init", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	out := fs.String("out", "./flotilla-tls", "directory for the CA and node certificates")
	var nodes, hosts []string
	fs.Var(stringList{&nodes}, "nodes", "node IDs to make certificates for, comma-separated")
	fs.Var(stringList{&hosts}, "hosts", "extra IPs or names to put in every node certificate")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if len(nodes) == 0 {
		return usageErr(c.stderr, "cluster tls-init: --nodes is required")
	}
	if err := cluster.TLSInit(*out, nodes, hosts); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "cluster CA and certificates for %s in %s\n", strings.Join(nodes, ", "), *out)
	return nil
}

func (c *cli) domain(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr(c.stderr, "domain: add, list or remove")
	}
	fs, cn := c.flags("domain " + args[0])
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "add", "remove":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla domain "+args[0]+" NAME")
		}
		name := pos[0]
		if args[0] == "add" {
			// The node answers with the name as stored (lower case, IDNA).
			var d admin.Domain
			err = cn.do(ctx, "POST", "/v1/domains", map[string]string{"name": pos[0]}, &d)
			if d.Name != "" {
				name = d.Name
			}
		} else {
			err = cn.do(ctx, "DELETE", "/v1/domains/"+url.PathEscape(pos[0]), nil, nil)
		}
		if err == nil && !cn.json {
			fmt.Fprintf(c.stdout, "domain %s %s\n", name, pastTense(args[0]))
		} else if err == nil && args[0] == "add" {
			c.printJSON(admin.Domain{Name: name})
		}
		return err
	case "list":
		var ds []admin.Domain
		if err := cn.do(ctx, "GET", "/v1/domains", nil, &ds); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(ds)
			return nil
		}
		var rows [][]string
		for _, d := range ds {
			rows = append(rows, []string{d.Name, d.Created.Format(time.RFC3339)})
		}
		c.table("DOMAIN\tCREATED", rows)
		return nil
	}
	return usageErr(c.stderr, "domain: unknown subcommand "+args[0])
}

func (c *cli) readPassword(fromStdin bool, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	if !fromStdin {
		return "", errors.New("give the password with --password-stdin (or --password)")
	}
	line, err := bufio.NewReader(c.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func (c *cli) user(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr(c.stderr, "user: add, list, passwd, remove, mailboxes or import")
	}
	fs, cn := c.flags("user " + args[0])
	var pwStdin, cram, apop bool
	var pw, name, domain string
	var quota int64
	switch args[0] {
	case "add", "passwd":
		fs.BoolVar(&pwStdin, "password-stdin", false, "read the password from standard input")
		fs.StringVar(&pw, "password", "", "the password (visible to other local users; prefer --password-stdin)")
		fs.BoolVar(&cram, "cram-md5", false, "also store the secret CRAM-MD5 needs (password-equivalent for CRAM-MD5; nodes offer it with --allow-cram-md5)")
		fs.BoolVar(&apop, "apop", false, "also store the secret POP3 APOP needs: the password itself (nodes offer APOP with --allow-apop)")
	}
	if args[0] == "add" {
		fs.StringVar(&name, "name", "", "display name")
		fs.Int64Var(&quota, "quota", 0, "quota in bytes (0: none)")
	}
	if args[0] == "list" {
		fs.StringVar(&domain, "domain", "", "only users of this domain")
	}
	var mailbox string
	if args[0] == "import" {
		fs.StringVar(&mailbox, "mailbox", "INBOX", "mailbox to store the message in")
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "import":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla user import ADDRESS [--mailbox NAME] < message.eml")
		}
		var out struct {
			UID uint32 `json:"uid"`
		}
		path := "/v1/users/" + url.PathEscape(pos[0]) + "/messages?mailbox=" + url.QueryEscape(mailbox)
		if err := cn.doRaw(ctx, "POST", path, c.stdin, &out); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "stored in %s %s as UID %d\n", pos[0], mailbox, out.UID)
		return nil
	case "mailboxes":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla user mailboxes ADDRESS")
		}
		var mbs []admin.Mailbox
		if err := cn.do(ctx, "GET", "/v1/users/"+url.PathEscape(pos[0])+"/mailboxes", nil, &mbs); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(mbs)
			return nil
		}
		var rows [][]string
		for _, m := range mbs {
			rows = append(rows, []string{m.Name, orDash(m.SpecialUse), fmt.Sprint(m.Messages), fmt.Sprint(m.Unseen), fmt.Sprint(m.Size), fmt.Sprint(m.UIDValidity), fmt.Sprint(m.UIDNext)})
		}
		c.table("MAILBOX\tUSE\tMESSAGES\tUNSEEN\tSIZE\tUIDVALIDITY\tUIDNEXT", rows)
		return nil
	case "add", "passwd", "remove":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla user "+args[0]+" ADDRESS")
		}
		addr := pos[0]
		switch args[0] {
		case "add":
			p, err := c.readPassword(pwStdin, pw)
			if err != nil {
				return err
			}
			var u admin.User
			err = cn.do(ctx, "POST", "/v1/users", map[string]any{"address": addr, "password": p, "name": name, "quota_bytes": quota, "cram_md5": cram, "apop": apop}, &u)
			if err != nil {
				return err
			}
			if u.Address != "" {
				addr = u.Address // as stored
			}
		case "passwd":
			p, err := c.readPassword(pwStdin, pw)
			if err != nil {
				return err
			}
			if err := cn.do(ctx, "PUT", "/v1/users/"+url.PathEscape(addr)+"/password", map[string]any{"password": p, "cram_md5": cram, "apop": apop}, nil); err != nil {
				return err
			}
		case "remove":
			if err := cn.do(ctx, "DELETE", "/v1/users/"+url.PathEscape(addr), nil, nil); err != nil {
				return err
			}
		}
		if !cn.json {
			fmt.Fprintf(c.stdout, "user %s %s\n", addr, pastTense(args[0]))
		}
		return nil
	case "list":
		var us []admin.User
		if err := cn.do(ctx, "GET", "/v1/users?domain="+url.QueryEscape(domain), nil, &us); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(us)
			return nil
		}
		var rows [][]string
		for _, u := range us {
			q := "-"
			if u.QuotaBytes > 0 {
				q = fmt.Sprint(u.QuotaBytes)
			}
			rows = append(rows, []string{u.Address, u.Name, fmt.Sprint(u.UsedBytes), q})
		}
		c.table("ADDRESS\tNAME\tUSED\tQUOTA", rows)
		return nil
	}
	return usageErr(c.stderr, "user: unknown subcommand "+args[0])
}

func (c *cli) alias(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr(c.stderr, "alias: add, list or remove")
	}
	fs, cn := c.flags("alias " + args[0])
	var domain string
	if args[0] == "list" {
		fs.StringVar(&domain, "domain", "", "only aliases of this domain")
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "add":
		if len(pos) < 2 {
			return usageErr(c.stderr, "usage: flotilla alias add ADDRESS TARGET[,TARGET...] [TARGET...]   (ADDRESS @domain: catch-all)")
		}
		var targets []string
		for _, p := range pos[1:] {
			_ = stringList{&targets}.Set(strings.Join(append(targets, p), ","))
		}
		var a admin.Alias
		if err := cn.do(ctx, "POST", "/v1/aliases", admin.Alias{Address: pos[0], Targets: targets}, &a); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(a)
		} else {
			fmt.Fprintf(c.stdout, "alias %s -> %s\n", a.Address, strings.Join(a.Targets, ", "))
		}
		return nil
	case "remove":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla alias remove ADDRESS")
		}
		if err := cn.do(ctx, "DELETE", "/v1/aliases/"+url.PathEscape(pos[0]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "alias %s removed\n", pos[0])
		return nil
	case "list":
		var as []admin.Alias
		if err := cn.do(ctx, "GET", "/v1/aliases?domain="+url.QueryEscape(domain), nil, &as); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(as)
			return nil
		}
		var rows [][]string
		for _, a := range as {
			rows = append(rows, []string{a.Address, strings.Join(a.Targets, ", ")})
		}
		c.table("ALIAS\tTARGETS", rows)
		return nil
	}
	return usageErr(c.stderr, "alias: unknown subcommand "+args[0])
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func short(d string) string {
	if len(d) > 16 {
		return d[:16]
	}
	return d
}

func pastTense(verb string) string {
	switch verb {
	case "add":
		return "added"
	case "remove":
		return "removed"
	case "passwd":
		return "password changed"
	}
	return verb
}
