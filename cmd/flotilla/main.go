// Command flotilla is the Flotilla mail server and its administration tool.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `flotilla: a clustered, highly available mail server

Usage:
  flotilla serve [flags]                 run a node (flotilla serve --dev for a demo)
  flotilla cluster status|verify|snapshot|transfer-leadership|remove|upgrade-check
  flotilla cluster tls-init --out DIR --nodes n1,n2,n3 [--hosts ip,...]
  flotilla domain add|list|remove
  flotilla user add|list|passwd|remove|mailboxes|import
  flotilla alias add|list|remove
  flotilla queue list|show|retry|hold|release|delete|inject
  flotilla delivery show|set|stats [settings|relays|routes|collect]
  flotilla relay show|set [--mode M] [--trusted LIST] [--add LIST] [--remove LIST]
  flotilla backup create --out FILE | restore --file FILE
  flotilla cluster recover --keep NODE --data-dir DIR [serve flags]   (offline)
  flotilla version

Administration commands reach a node through the control socket in its data
dir (--data-dir, default ./flotilla-data) or over HTTP (--addr URL with
--token or FLOTILLA_TOKEN). Run "flotilla <command> -h" for its flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "flotilla:", err)
		os.Exit(1)
	}
}

// exitError ends the program with a code, its message already printed.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError{2}
	}
	env := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "cluster":
		return env.cluster(ctx, args[1:])
	case "domain":
		return env.domain(ctx, args[1:])
	case "user":
		return env.user(ctx, args[1:])
	case "alias":
		return env.alias(ctx, args[1:])
	case "queue":
		return env.queue(ctx, args[1:])
	case "relay":
		return env.relay(ctx, args[1:])
	case "delivery":
		return env.delivery(ctx, args[1:])
	case "backup":
		return env.backup(ctx, args[1:])
	case "version":
		fmt.Fprintln(stdout, buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "flotilla: unknown command %q\n\n%s", args[0], usage)
	return exitError{2}
}
