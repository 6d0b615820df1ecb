package main

import "context"

// startPOP3 starts the POP3 listeners (not yet wired).
func startPOP3(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	return func(context.Context) {}, nil
}
