package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/mail/delivery"
)

const queueUsage = `queue: list, show ID, retry|hold|release|delete ID...|--all, inject --from ADDR --to ADDR[,ADDR] < message`

func (c *cli) queue(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr(c.stderr, queueUsage)
	}
	fs, cn := c.flags("queue " + args[0])
	var all bool
	var from string
	var to []string
	switch args[0] {
	case "retry", "hold", "release", "delete":
		fs.BoolVar(&all, "all", false, "every entry of the queue")
	case "inject":
		fs.StringVar(&from, "from", "", "envelope sender (empty: the null sender)")
		fs.Var(stringList{&to}, "to", "recipients, comma-separated")
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "list":
		var qs []admin.QueueEntry
		if err := cn.do(ctx, "GET", "/v1/queue", nil, &qs); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(qs)
			return nil
		}
		var rows [][]string
		for _, q := range qs {
			held := ""
			if q.Held {
				held = " (held)"
			}
			for _, r := range q.Recipients {
				rows = append(rows, []string{fmt.Sprint(q.ID), orDash(q.From), r.Address, r.State + held, fmt.Sprint(r.Attempts), fmt.Sprint(q.Size),
					q.NextAttempt.Format(time.RFC3339), orDash(q.LeaseNode), r.LastError})
			}
		}
		c.table("ID\tFROM\tTO\tSTATE\tATTEMPTS\tSIZE\tNEXT ATTEMPT\tLEASE\tLAST ERROR", rows)
		return nil
	case "show":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla queue show ID")
		}
		var q admin.QueueEntry
		if err := cn.do(ctx, "GET", "/v1/queue/"+url.PathEscape(pos[0]), nil, &q); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(q)
			return nil
		}
		fmt.Fprintf(c.stdout, "id:           %d\nfrom:         <%s>\nsize:         %d\ncreated:      %s\nnext attempt: %s\nheld:         %s\n",
			q.ID, q.From, q.Size, q.Created.Format(time.RFC3339), q.NextAttempt.Format(time.RFC3339), yesNo(q.Held))
		if q.LeaseNode != "" {
			fmt.Fprintf(c.stdout, "lease:        %s until %s\n", q.LeaseNode, q.LeaseUntil.Format(time.RFC3339Nano))
		} else {
			fmt.Fprintf(c.stdout, "lease:        -\n")
		}
		if q.LastAttempt != nil {
			fmt.Fprintf(c.stdout, "last attempt: %s\n", q.LastAttempt.Format(time.RFC3339))
		}
		var rows [][]string
		for _, r := range q.Recipients {
			rows = append(rows, []string{r.Address, r.State, fmt.Sprint(r.Attempts), r.LastError})
		}
		c.table("RECIPIENT\tSTATE\tATTEMPTS\tLAST ERROR", rows)
		fmt.Fprintf(c.stdout, "\n%s", q.Header)
		return nil
	case "retry", "hold", "release", "delete":
		if all == (len(pos) > 0) {
			return usageErr(c.stderr, "usage: flotilla queue "+args[0]+" ID... | --all")
		}
		ids := pos
		if all {
			ids = []string{"all"}
		}
		var changed []uint64
		for _, id := range ids {
			var res admin.QueueOpResult
			if err := cn.do(ctx, "POST", "/v1/queue/"+url.PathEscape(id)+"/"+args[0], struct{}{}, &res); err != nil {
				return fmt.Errorf("queue %s %s: %w", args[0], id, err)
			}
			changed = append(changed, res.IDs...)
		}
		if cn.json {
			c.printJSON(admin.QueueOpResult{IDs: changed})
		} else {
			fmt.Fprintf(c.stdout, "%s: %d entries\n", args[0], len(changed))
		}
		return nil
	case "inject":
		if len(to) == 0 || len(pos) > 0 {
			return usageErr(c.stderr, "usage: flotilla queue inject --from ADDR --to ADDR[,ADDR] < message")
		}
		q := url.Values{"from": {from}, "to": {strings.Join(to, ",")}}
		var out delivery.Injected
		if err := cn.doRaw(ctx, "POST", "/v1/queue/inject?"+q.Encode(), c.stdin, &out); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(out)
			return nil
		}
		if out.QueueID != 0 {
			fmt.Fprintf(c.stdout, "queued as %d for %s\n", out.QueueID, strings.Join(out.Queued, ", "))
		}
		if len(out.Local) > 0 {
			fmt.Fprintf(c.stdout, "stored for %s\n", strings.Join(out.Local, ", "))
		}
		return nil
	}
	return usageErr(c.stderr, queueUsage)
}
