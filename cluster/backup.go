package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/storage"
)

// Backup writes a consistent backup of this node's state, message bodies
// included: a snapshot that restores with no peer to fetch from.
func (n *Node) Backup(w io.Writer) (int64, error) {
	sn, err := n.store.Snapshot()
	if err != nil {
		return 0, err
	}
	defer sn.Release()
	return sn.WriteBackup(w)
}

// RestoreBackup replaces the cluster's state with a backup, on the leader:
// the backup is verified whole first, then installed through Raft, which
// sends it to every follower as a snapshot. For disaster recovery into a
// fresh cluster; the cluster keeps its own identity.
func (n *Node) RestoreBackup(ctx context.Context, path string) error {
	if n.raft.State() != raft.Leader {
		_, leader := n.raft.LeaderWithID()
		return fmt.Errorf("%w: restore runs on the leader, which is %q", storage.ErrInvalid, leader)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	index, bodies, err := storage.VerifyBackup(f, filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("%w: backup %s: %v", storage.ErrInvalid, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	n.log.Warn("restoring a backup over the cluster's state", "file", path, "backup_index", index, "bodies", bodies)
	timeout := time.Hour
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index, Size: fi.Size()}
	if err := n.raft.Restore(meta, f, timeout); err != nil {
		return fmt.Errorf("restore backup: %w", err)
	}
	return nil
}

// Recover rewrites the Raft configuration of a stopped node so that it
// forms a cluster of the given servers only (usually itself): the way back
// when a majority is lost for good. The surviving servers' addresses are
// taken from the node's own configuration.
func Recover(cfg Config, keep []string) (raft.Configuration, error) {
	var out raft.Configuration
	n, err := New(cfg)
	if err != nil {
		return out, err
	}
	defer n.closeStores()
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = newHCLogger("raft", n.log)
	rc.NoSnapshotRestoreOnStart = true
	_, trans := raft.NewInmemTransport(raft.ServerAddress(n.cfg.AdvertiseAddr))
	current, err := raft.GetConfiguration(rc, n.fsm, n.logs, n.logStore, n.snaps, trans)
	if err != nil {
		return out, fmt.Errorf("reading the configuration: %w", err)
	}
	for _, id := range keep {
		found := false
		for _, s := range current.Servers {
			if string(s.ID) == id {
				s.Suffrage = raft.Voter
				out.Servers = append(out.Servers, s)
				found = true
			}
		}
		if !found {
			return out, fmt.Errorf("%w: %s is not in this node's configuration (%v)", storage.ErrNotFound, id, current.Servers)
		}
	}
	if len(out.Servers) == 0 {
		return out, errors.New("recover: no servers to keep")
	}
	if err := raft.RecoverCluster(rc, n.fsm, n.logs, n.logStore, n.snaps, trans, out); err != nil {
		return out, fmt.Errorf("recover: %w", err)
	}
	return out, nil
}
