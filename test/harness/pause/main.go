// Command pause holds a network namespace for the container tier of the test
// harness: it sleeps until it is told to stop. Each node's container joins
// the namespace of its pause container, so the node's address and the
// iptables rules of a fault outlive the node's kills and restarts, as they
// do for a process on a loopback address.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
