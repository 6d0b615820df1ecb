package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/mail/delivery"
)

const deliveryUsage = `delivery: show KIND, set KIND [--file F] (JSON, else from standard input), stats, collect-status
  KIND is settings, relays, routes or collect (see docs/DELIVERY.md)`

func (c *cli) delivery(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr(c.stderr, deliveryUsage)
	}
	fs, cn := c.flags("delivery " + args[0])
	var file string
	if args[0] == "set" {
		fs.StringVar(&file, "file", "", "read the JSON from this file (default: standard input)")
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "show":
		kind := "settings"
		if len(pos) == 1 {
			kind = pos[0]
		} else if len(pos) > 1 {
			return usageErr(c.stderr, deliveryUsage)
		}
		var v json.RawMessage
		if err := cn.do(ctx, "GET", "/v1/delivery/"+kind, nil, &v); err != nil {
			return err
		}
		var out bytes.Buffer
		_ = json.Indent(&out, v, "", "  ")
		fmt.Fprintln(c.stdout, out.String())
		return nil
	case "set":
		if len(pos) != 1 {
			return usageErr(c.stderr, "usage: flotilla delivery set settings|relays|routes|collect [--file F] < json")
		}
		var in io.Reader = c.stdin
		if file != "" {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		var v json.RawMessage
		if err := cn.doRaw(ctx, "PUT", "/v1/delivery/"+pos[0], in, &v); err != nil {
			return err
		}
		if cn.json {
			fmt.Fprintln(c.stdout, string(v))
		} else {
			fmt.Fprintf(c.stdout, "delivery %s set for the whole cluster\n", pos[0])
		}
		return nil
	case "stats":
		var st delivery.Stats
		if err := cn.do(ctx, "GET", "/v1/delivery/stats", nil, &st); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(st)
			return nil
		}
		c.table("NODE\tDELIVERED\tDEFERRED\tBOUNCED\tMESSAGES\tIN FLIGHT", [][]string{{st.Node, fmt.Sprint(st.Delivered),
			fmt.Sprint(st.Deferred), fmt.Sprint(st.Bounced), fmt.Sprint(st.Messages), fmt.Sprint(st.InFlight)}})
		return nil
	case "collect-status":
		var sts []admin.CollectStatus
		if err := cn.do(ctx, "GET", "/v1/delivery/collect/status", nil, &sts); err != nil {
			return err
		}
		if cn.json {
			c.printJSON(sts)
			return nil
		}
		var rows [][]string
		for _, s := range sts {
			until := "-"
			if s.LeaseUntil != nil {
				until = s.LeaseUntil.Format("15:04:05.000")
			}
			rows = append(rows, []string{s.Account, orDash(s.LeaseNode), until, fmt.Sprint(s.Remembered)})
		}
		c.table("ACCOUNT\tLEASE\tUNTIL\tREMEMBERED", rows)
		return nil
	}
	return usageErr(c.stderr, deliveryUsage)
}
