//go:build !flotilla_next

package cluster

import (
	"fmt"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// applyExtra applies command kinds added by build tags (see next.go).
func applyExtra(_ *storage.Tx, cmd command.Command) error {
	return fmt.Errorf("no handler for command %s", cmd.Type())
}
