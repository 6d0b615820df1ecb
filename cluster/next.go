//go:build flotilla_next

package cluster

import (
	"fmt"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// A build with the flotilla_next tag understands one more command kind than
// the release: the stand-in for "the next version" in rolling-upgrade tests.
func applyExtra(tx *storage.Tx, cmd command.Command) error {
	if c, ok := cmd.(*command.Note); ok {
		return tx.SetSetting("note."+c.Key, []byte(c.Text))
	}
	return fmt.Errorf("no handler for command %s", cmd.Type())
}
