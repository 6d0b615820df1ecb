package harness

import (
	"fmt"
	"os"
	"sync"
)

// Runner stands in for testing.T so that programs (benchmarks, the chaos
// soak) can use the harness. Fatalf cleans up and exits.
type Runner struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	dir      string
}

// NewRunner makes a Runner with its own temporary directory.
func NewRunner() *Runner {
	dir, err := os.MkdirTemp("", "flotilla-run-")
	if err != nil {
		panic(err)
	}
	return &Runner{dir: dir}
}

func (r *Runner) Helper()                   {}
func (r *Runner) Name() string              { return "run" }
func (r *Runner) Logf(f string, a ...any)   { fmt.Fprintf(os.Stderr, f+"\n", a...) }
func (r *Runner) Fatal(a ...any)            { r.Fatalf("%s", fmt.Sprint(a...)) }
func (r *Runner) TempDir() string           { d, _ := os.MkdirTemp(r.dir, "t"); return d }
func (r *Runner) Errorf(f string, a ...any) { r.setFailed(); r.Logf(f, a...) }

func (r *Runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *Runner) setFailed() {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
}

func (r *Runner) Cleanup(f func()) {
	r.mu.Lock()
	r.cleanups = append(r.cleanups, f)
	r.mu.Unlock()
}

func (r *Runner) Fatalf(f string, a ...any) {
	r.setFailed()
	r.Logf(f, a...)
	r.Finish()
	os.Exit(1)
}

// Finish runs the cleanups (last first) and removes the directory.
func (r *Runner) Finish() {
	r.mu.Lock()
	c := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(c) - 1; i >= 0; i-- {
		c[i]()
	}
	os.RemoveAll(r.dir)
}
