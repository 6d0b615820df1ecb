package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotilla-mail/flotilla/cluster"
)

// backup: `flotilla backup create --out FILE` and `flotilla backup restore --file FILE`.
func (c *cli) backup(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "restore") {
		return usageErr(c.stderr, "backup: create --out FILE, or restore --file FILE (run restore against the leader of a fresh cluster)")
	}
	fs, cn := c.flags("backup " + args[0])
	out := fs.String("out", "", "file to write the backup to")
	in := fs.String("file", "", "backup file to restore")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "create":
		if *out == "" {
			return usageErr(c.stderr, "backup create: --out FILE is required")
		}
		tmp := *out + ".partial"
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		n, err := cn.download(ctx, "/v1/backup", f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("backup: %w", err)
		}
		if err := os.Rename(tmp, *out); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "backup written to %s (%d bytes)\n", *out, n)
		return nil
	default:
		if *in == "" {
			return usageErr(c.stderr, "backup restore: --file FILE is required")
		}
		f, err := os.Open(*in)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := cn.doRaw(ctx, "POST", "/v1/backup/restore", f, nil); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		fmt.Fprintf(c.stdout, "restored %s; every node now holds its state\n", *in)
		return nil
	}
}

// recoverCluster is `flotilla cluster recover --keep n1[,n2] [serve flags]`:
// offline, on a stopped node, it rewrites the node's Raft configuration to
// the servers kept, for when a majority is lost for good.
func (c *cli) recoverCluster(args []string) error {
	var keep []string
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--keep" || a == "-keep":
			if i+1 < len(args) {
				_ = stringList{&keep}.Set(args[i+1])
				i++
			}
		case strings.HasPrefix(a, "--keep=") || strings.HasPrefix(a, "-keep="):
			_ = stringList{&keep}.Set(a[strings.IndexByte(a, '=')+1:])
		default:
			rest = append(rest, a)
		}
	}
	if len(keep) == 0 {
		return usageErr(c.stderr, "usage: flotilla cluster recover --keep NODE[,NODE] --data-dir DIR [the node's serve flags or --config]")
	}
	cfg, err := loadConfig(rest, c.stderr)
	if err != nil {
		return err
	}
	tlsFiles, err := clusterTLSFiles(&cfg)
	if err != nil {
		return err
	}
	log, err := newLogger(c.stderr, "warn", "text")
	if err != nil {
		return err
	}
	advertise := cfg.Advertise
	if advertise == "" {
		advertise = cfg.Bind
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "node.json")); err != nil {
		return errors.New("cluster recover: --data-dir is not a node's data dir")
	}
	conf, err := cluster.Recover(cluster.Config{NodeID: cfg.NodeID, DataDir: cfg.DataDir, BindAddr: cfg.Bind,
		AdvertiseAddr: advertise, ClusterPort: cfg.ClusterPort, GossipPort: cfg.GossipPort, TLS: tlsFiles, Logger: log}, keep)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(conf.Servers)
	fmt.Fprintf(c.stdout, "configuration rewritten: %s\nstart the node as usual; it forms a cluster of these servers, and new nodes join it\n", b)
	return nil
}
