package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/flotilla-mail/flotilla/cluster"
)

// upgradeCheck prints whether one node can go down for an upgrade now and
// what to do next; it exits 1 when it is not safe.
func (c *cli) upgradeCheck(ctx context.Context, cn *conn) error {
	var rep cluster.UpgradeReport
	if err := cn.do(ctx, "GET", "/v1/cluster/upgrade-check", nil, &rep); err != nil {
		return err
	}
	if cn.json {
		c.printJSON(rep)
	} else {
		verdict := "SAFE to roll one node now"
		if !rep.Safe {
			verdict = "NOT safe to take a node down now"
		}
		fmt.Fprintln(c.stdout, verdict)
		var versions []string
		for v, ids := range rep.Versions {
			sort.Strings(ids)
			versions = append(versions, fmt.Sprintf("%s: %s", v, strings.Join(ids, ", ")))
		}
		sort.Strings(versions)
		fmt.Fprintf(c.stdout, "builds: %s (command versions %d..%d)\n", strings.Join(versions, "; "), rep.MinCommandVersion, rep.MaxCommandVersion)
		for _, p := range rep.Problems {
			fmt.Fprintln(c.stdout, "problem:", p)
		}
		for _, n := range rep.Next {
			fmt.Fprintln(c.stdout, "next:", n)
		}
	}
	if !rep.Safe {
		return exitError{1}
	}
	return nil
}
