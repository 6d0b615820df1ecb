package cluster

import (
	"errors"
	"fmt"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// applyQueue applies the outbound queue and mail collection commands; ok is
// false for other types. Leases are judged at the command's time (tx.Now),
// which the proposer stamped: every node decides the same.
func applyQueue(tx *storage.Tx, cmd command.Command) (resp command.Response, ok bool, err error) {
	ok = true
	switch c := cmd.(type) {
	case *command.QueueClaim:
		for _, id := range c.IDs {
			granted, cerr := tx.ClaimQueueEntry(id, c.Node, c.Until)
			switch {
			case errors.Is(cerr, storage.ErrNotFound):
				resp.Failed = append(resp.Failed, id)
			case cerr != nil:
				return resp, ok, cerr
			case granted:
				resp.IDs = append(resp.IDs, id)
			default:
				resp.Failed = append(resp.Failed, id)
			}
		}
	case *command.QueueResult:
		for i := range c.Entries {
			done, rerr := applyEntryResult(tx, c.Node, &c.Entries[i])
			if rerr != nil {
				return resp, ok, rerr
			}
			if done {
				resp.IDs = append(resp.IDs, c.Entries[i].ID)
			} else {
				resp.Failed = append(resp.Failed, c.Entries[i].ID)
			}
		}
	case *command.QueueAdmin:
		resp.IDs, err = applyQueueAdmin(tx, c)
	case *command.CollectLease:
		if c.Release {
			err = tx.ReleaseCollectLease(c.Account, c.Node)
		} else {
			err = tx.AcquireCollectLease(c.Account, c.Node, c.Until)
		}
	case *command.CollectDeliver:
		var seen bool
		if seen, err = tx.Collected(c.Account, c.UID); err != nil {
			return
		}
		if seen {
			err = fmt.Errorf("%w: message %s of account %s was collected before", storage.ErrExists, c.UID, c.Account)
			return
		}
		if resp.IDs, err = applyDeliver(tx, &c.Deliver); err != nil {
			return
		}
		err = tx.MarkCollected(c.Account, c.UID)
	case *command.CollectForget:
		err = tx.ForgetCollected(c.Account, c.UIDs, c.All)
	default:
		ok = false
	}
	return
}

// applyEntryResult records one attempt's outcome. It reports false when the
// entry is gone (finished, deleted). A report to the sender is stored only
// by the result that causes it, so a result applied twice (retried after a
// lost answer, or sent by two nodes under a fault) never makes two.
func applyEntryResult(tx *storage.Tx, node string, r *command.EntryResult) (bool, error) {
	q, err := tx.QueueEntry(r.ID)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	meta, err := tx.QueueMeta(q.ID)
	if err != nil {
		return false, err
	}
	bounced, delivered := false, false
	for _, rr := range r.Rcpts {
		for i := range q.Recipients {
			rc := &q.Recipients[i]
			if rc.Address != rr.Address || rc.State != storage.RcptPending {
				continue
			}
			rc.Attempts++
			rc.LastError = rr.Error
			switch rr.Outcome {
			case command.Delivered:
				rc.State = storage.RcptDelivered
				delivered = true
			case command.Bounced:
				rc.State = storage.RcptBounced
				bounced = true
			}
			break
		}
	}
	meta.LastAttempt = tx.Now().UnixNano()
	if q.LeaseNode == node {
		q.LeaseNode, q.LeaseUntil = "", 0
	}
	if r.NextAttempt > 0 {
		q.NextAttempt = r.NextAttempt
	}
	if bounced && r.FailureDSN != nil {
		if _, err := applyDeliver(tx, r.FailureDSN); err != nil {
			return false, err
		}
	}
	if delivered && r.SuccessDSN != nil {
		if _, err := applyDeliver(tx, r.SuccessDSN); err != nil {
			return false, err
		}
	}
	if r.DelayDSN != nil && !meta.DelayNotified && q.Pending() {
		if _, err := applyDeliver(tx, r.DelayDSN); err != nil {
			return false, err
		}
		meta.DelayNotified = true
	}
	if !q.Pending() {
		return true, tx.DeleteQueueEntry(q.ID)
	}
	if err := tx.PutQueueEntry(q); err != nil {
		return false, err
	}
	return true, tx.PutQueueMeta(q.ID, meta)
}

func applyQueueAdmin(tx *storage.Tx, c *command.QueueAdmin) ([]uint64, error) {
	ids := c.IDs
	if c.All {
		ids = nil
		if err := tx.QueueEntries(func(q storage.QueueEntry) bool {
			ids = append(ids, q.ID)
			return true
		}); err != nil {
			return nil, err
		}
	}
	var done []uint64
	for _, id := range ids {
		q, err := tx.QueueEntry(id)
		if errors.Is(err, storage.ErrNotFound) && !c.All && len(ids) == 1 {
			return nil, err
		}
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		switch c.Op {
		case command.QueueRetry:
			q.NextAttempt = tx.Now().UnixNano()
		case command.QueueHold:
			q.Held = true
		case command.QueueRelease:
			q.Held = false
			q.NextAttempt = tx.Now().UnixNano()
		case command.QueueDelete:
			if err := tx.DeleteQueueEntry(id); err != nil {
				return nil, err
			}
			done = append(done, id)
			continue
		default:
			return nil, fmt.Errorf("%w: queue operation %d", storage.ErrInvalid, c.Op)
		}
		if err := tx.PutQueueEntry(q); err != nil {
			return nil, err
		}
		done = append(done, id)
	}
	return done, nil
}
