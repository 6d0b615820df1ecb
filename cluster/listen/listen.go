// Package listen holds the accept loop of the node's own listeners: the
// cluster port, IMAP and POP3 (go-smtp and net/http have theirs).
package listen

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

// ErrClosing is what Accept returns when the server is shutting down.
var ErrClosing = errors.New("listener closing")

// Accept accepts connections on l and hands each to start, until closing
// reports true (ErrClosing), ctx ends (ctx.Err(); it also closes l), or l is
// closed otherwise (its error). Any other accept error (EMFILE when the
// process is out of descriptors, ECONNABORTED, a timeout) is logged and
// retried after a delay growing from 5 ms to 1 s: a listener that returned on
// it would leave the node without that protocol until restarted. start
// returns false when the server began closing before the session could be
// registered; the connection is then closed and Accept returns ErrClosing.
func Accept(ctx context.Context, l net.Listener, closing func() bool, log *slog.Logger, start func(net.Conn) bool) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			switch {
			case closing():
				return ErrClosing
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, net.ErrClosed):
				return err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn("accept failed; retrying", "addr", l.Addr().String(), "err", err, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		delay = 0
		if !start(c) {
			c.Close()
			return ErrClosing
		}
	}
}
