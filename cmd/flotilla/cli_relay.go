package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
)

const relayUsage = `relay: show, or set [--mode local-hosts|local-users|listed|none] [--trusted LIST] [--add LIST] [--remove LIST]
  local-hosts  only clients from trusted addresses relay
  local-users  only authenticated users relay (the default)
  listed       authenticated users and clients from trusted addresses
  none         nobody relays: mail goes to local recipients only
LIST is comma-separated IP addresses, CIDR networks and host names.`

// relay shows or sets who may relay mail through the cluster's SMTP
// listeners, a setting every node applies.
func (c *cli) relay(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "show" && args[0] != "set") {
		return usageErr(c.stderr, relayUsage)
	}
	fs, cn := c.flags("relay " + args[0])
	var mode string
	var trusted, add, remove []string
	trustedSet := false
	if args[0] == "set" {
		fs.StringVar(&mode, "mode", "", "local-hosts, local-users, listed or none (default: unchanged)")
		fs.Func("trusted", "replace the trusted hosts with LIST (\"\" clears)", func(v string) error {
			trustedSet = true
			return stringList{&trusted}.Set(v)
		})
		fs.Var(stringList{&add}, "add", "add LIST to the trusted hosts")
		fs.Var(stringList{&remove}, "remove", "remove LIST from the trusted hosts")
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr(c.stderr, relayUsage)
	}
	var cur relay.Settings
	if err := cn.do(ctx, "GET", "/v1/relay", nil, &cur); err != nil {
		return err
	}
	if args[0] == "set" {
		if mode == "" && !trustedSet && len(add) == 0 && len(remove) == 0 {
			return usageErr(c.stderr, "relay set: give --mode, --trusted, --add or --remove")
		}
		next := cur
		if mode != "" {
			next.Mode = relay.Mode(mode)
		}
		if trustedSet {
			next.Trusted = trusted
		}
		next.Trusted = append(append([]string{}, next.Trusted...), add...)
		if len(remove) > 0 {
			drop := map[string]bool{}
			for _, r := range remove {
				if n, err := (relay.Settings{Trusted: []string{r}}).Normalize(); err == nil && len(n.Trusted) == 1 {
					drop[n.Trusted[0]] = true
				}
			}
			kept := []string{}
			for _, t := range next.Trusted {
				if n, err := (relay.Settings{Trusted: []string{t}}).Normalize(); err != nil || !drop[n.Trusted[0]] {
					kept = append(kept, t)
				}
			}
			next.Trusted = kept
		}
		if next.Trusted == nil {
			next.Trusted = []string{}
		}
		if err := cn.do(ctx, "PUT", "/v1/relay", next, &cur); err != nil {
			return err
		}
	}
	if cn.json {
		c.printJSON(cur)
		return nil
	}
	fmt.Fprintf(c.stdout, "mode:    %s\n", cur.Mode)
	fmt.Fprintf(c.stdout, "trusted: %s\n", orDash(strings.Join(cur.Trusted, ", ")))
	return nil
}
