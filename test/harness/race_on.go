//go:build race

package harness

// raceEnabled: the test binary was built with -race, so the nodes are too.
const raceEnabled = true
